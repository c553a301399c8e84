//! Platform code. Only Unix (unix domain sockets with SCM_RIGHTS) is supported.

pub mod unix;
