//! The elaboration service: prompt from the user's notes, streamed generation, hand-off to the queue.
