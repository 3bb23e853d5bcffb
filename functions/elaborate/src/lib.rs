//! The elaborate function's handler: HTTP request in, Server-Sent Events out.
