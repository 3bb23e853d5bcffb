//! The memory consumer's handler: an SQS batch in, the failed message ids out.
