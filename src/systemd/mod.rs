//! Everything that talks to systemd (or stands in for it when it is absent):
//! `listen` takes the inherited sockets or binds our own, `notify` speaks
//! the sd_notify protocol, `journal` sets up logging. Nothing here knows
//! FastCGI.

pub mod journal;
pub mod listen;
pub mod notify;
