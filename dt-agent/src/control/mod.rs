//! The control socket: [`protocol`] (the requests and answers), [`server`] (the agent's side,
//! root only) and [`client`] (the verbs' side, with deadlines).

pub mod client;
pub mod protocol;
pub mod server;

pub use crate::settings::DEFAULT_SOCKET;
pub use client::{
    ANSWER_DEADLINE, CallError, PUSH_DEADLINE, UNINSTALL_DEADLINE, call, call_within,
};
pub use protocol::{PushedFile, Request, Response, RuleInfo, RulesInfo};
pub use server::{Handler, SocketFile, bind, serve};
