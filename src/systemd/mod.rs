//! Everything that talks to systemd (or stands in for it when it is absent):
//! `listen` takes the inherited sockets or binds our own, `notify` speaks
//! the sd_notify protocol, `journal` sets up logging. Nothing here knows
//! FastCGI or HTTP: which transport a socket speaks is the server's choice.

pub mod journal;
pub mod listen;
pub mod notify;
