//! What the daemon is doing, for whoever watches (`GET /v1/events`, the
//! dashboard): the stages of every create, start, run, pull and build as
//! they happen, whichever client asked (the CLI, the API, MCP), and how
//! each ended. Watching costs a call nothing: notes go to a bounded
//! broadcast, and a watcher that falls behind skips what it missed.

use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

use crate::domain::Event;
use crate::protocol::cli::Request;
use crate::protocol::RpcError;

/// Notes kept for a watcher that is behind.
const BACKLOG: usize = 256;

/// The calls worth watching: the ones that report stages.
const WATCHED: &[&str] = &[
    "vm.create",
    "vm.start",
    "vm.stop",
    "vm.restart",
    "vm.delete",
    "vm.run",
    "vm.snapshot",
    "workspace.prepare",
    "image.build",
    "image.pull",
    "image.import",
    "image.register",
    "kernel.pull",
    "kernel.import",
];

/// What a watched call is about (a VM, an image, a kernel), when the
/// request names it.
pub fn target(r: &Request) -> Option<String> {
    match r {
        Request::VmStart { name }
        | Request::VmStop { name }
        | Request::VmRestart { name }
        | Request::VmDelete { name, .. }
        | Request::VmSnapshot { name, .. }
        | Request::WorkspacePrepare { name, .. }
        | Request::ImageBuild { name, .. }
        | Request::KernelPull { name, .. }
        | Request::KernelImport { name, .. } => Some(name.clone()),
        Request::VmCreate(spec) => spec.name.clone(),
        Request::VmRun(spec) => spec.create.name.clone(),
        Request::ImagePull {
            reference, name, ..
        } => Some(name.clone().unwrap_or_else(|| reference.clone())),
        Request::ImageImport { name, file } => Some(name.clone().unwrap_or_else(|| file.clone())),
        Request::ImageRegister { name, .. } => Some(name.clone()),
        _ => None,
    }
}

/// One thing a call did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Note {
    pub request_id: String,
    pub method: &'static str,
    /// What it is about ([`target`]).
    pub target: Option<String>,
    #[serde(flatten)]
    pub what: What,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum What {
    Stage {
        stage: String,
        detail: String,
        elapsed_ms: u64,
        done: bool,
    },
    End {
        ok: bool,
        message: Option<String>,
    },
}

pub struct Activity {
    tx: broadcast::Sender<Note>,
}

/// The call a note is about.
#[derive(Debug, Clone)]
pub struct Call {
    pub request_id: String,
    pub method: &'static str,
    pub target: Option<String>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            tx: broadcast::channel(BACKLOG).0,
        }
    }
}

impl Activity {
    pub fn subscribe(&self) -> broadcast::Receiver<Note> {
        self.tx.subscribe()
    }

    pub fn watched(method: &str) -> bool {
        WATCHED.contains(&method)
    }

    /// A sender for the call's events that tells each stage on the way
    /// to `events` (same bound, same order; when the client goes, the
    /// call sees it as before).
    pub fn tap(&self, call: Call, events: mpsc::Sender<Event>) -> mpsc::Sender<Event> {
        let (tx, mut rx) = mpsc::channel::<Event>(events.max_capacity());
        let notes = self.tx.clone();
        tokio::spawn(async move {
            loop {
                let e = tokio::select! {
                    e = rx.recv() => e,
                    // The client gone: the call must see it at once (it
                    // waits on its sender's close, not only on a send).
                    _ = events.closed() => return,
                };
                let Some(e) = e else { return };
                if let Event::Stage {
                    stage,
                    detail,
                    elapsed_ms,
                    done,
                } = &e
                {
                    let _ = notes.send(Note {
                        request_id: call.request_id.clone(),
                        method: call.method,
                        target: call.target.clone(),
                        what: What::Stage {
                            stage: stage.clone(),
                            detail: detail.clone(),
                            elapsed_ms: *elapsed_ms,
                            done: *done,
                        },
                    });
                }
                if events.send(e).await.is_err() {
                    return;
                }
            }
        });
        tx
    }

    /// How the call ended.
    pub fn end<T>(&self, call: Call, res: &Result<T, RpcError>) {
        let _ = self.tx.send(Note {
            request_id: call.request_id,
            method: call.method,
            target: call.target,
            what: What::End {
                ok: res.is_ok(),
                message: res.as_ref().err().map(|e| e.message.clone()),
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stages_reach_the_client_in_order_and_the_watchers_too() {
        let a = Activity::default();
        let mut watch = a.subscribe();
        let (client, mut got) = mpsc::channel(4);
        let call = Call {
            request_id: "r1".into(),
            method: "vm.create",
            target: Some("box".into()),
        };
        let tx = a.tap(call.clone(), client);
        let stage = |s: &str, done| Event::Stage {
            stage: s.into(),
            detail: "d".into(),
            elapsed_ms: 1,
            done,
        };
        tx.send(stage("disks", false)).await.unwrap();
        tx.send(Event::Stdout(b"x".to_vec())).await.unwrap();
        tx.send(stage("disks", true)).await.unwrap();
        assert_eq!(got.recv().await, Some(stage("disks", false)));
        assert_eq!(got.recv().await, Some(Event::Stdout(b"x".to_vec())));
        assert_eq!(got.recv().await, Some(stage("disks", true)));
        let n = watch.recv().await.unwrap();
        assert_eq!(
            (n.request_id.as_str(), n.method, n.target.as_deref()),
            ("r1", "vm.create", Some("box"))
        );
        assert!(matches!(n.what, What::Stage { done: false, .. }));
        assert!(matches!(
            watch.recv().await.unwrap().what,
            What::Stage { done: true, .. }
        ));
        a.end(call, &Err::<(), _>(RpcError::failed("no")));
        assert_eq!(
            watch.recv().await.unwrap().what,
            What::End {
                ok: false,
                message: Some("no".into())
            }
        );
        // The client gone, with nothing in flight: the call's sender
        // closes at once, as it would without the tap (a call waits on
        // that to stop a command whose client went).
        drop(got);
        let closed = tokio::time::timeout(std::time::Duration::from_secs(5), tx.closed())
            .await
            .is_ok();
        assert!(closed, "the call sees its client go");
    }
}
