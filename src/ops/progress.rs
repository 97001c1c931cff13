//! Progress reporting: [`Stages`] for one request's timed stages (VM boot,
//! stop), [`Progress`] for work whose events may go to several waiters (a
//! shared image build).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::domain::Event;

/// Where [`Progress`] sends events.
pub type EventFn = Arc<dyn Fn(Event) + Send + Sync>;

/// Progress of a job, sent to whoever listens (never blocks).
#[derive(Clone)]
pub struct Progress {
    emit: Option<EventFn>,
    started: Instant,
}

impl Progress {
    /// A sink that drops everything.
    pub fn none() -> Progress {
        Progress {
            emit: None,
            started: Instant::now(),
        }
    }

    /// Progress straight into one request's event stream.
    pub fn to(events: mpsc::Sender<Event>) -> Progress {
        Progress::with(Arc::new(move |ev| {
            let _ = events.try_send(ev);
        }))
    }

    /// Progress into any function (a job forwarding to its waiters).
    pub fn with(emit: EventFn) -> Progress {
        Progress {
            emit: Some(emit),
            started: Instant::now(),
        }
    }

    fn emit(&self, ev: Event) {
        if let Some(f) = &self.emit {
            f(ev);
        }
    }

    /// Reports that `stage` began (`done = false`) or finished.
    pub fn stage(&self, stage: &str, detail: impl Into<String>, done: bool) {
        self.emit(Event::Stage {
            stage: stage.to_string(),
            detail: detail.into(),
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            done,
        });
    }

    /// A log line.
    pub fn log(&self, line: impl Into<String>) {
        self.emit(Event::Log(line.into()));
    }

    /// A channel whose stage and log events are forwarded into this
    /// progress (stage names prefixed with `prefix`), and the task that
    /// forwards them; it ends when every sender is dropped.
    pub fn forwarder(
        &self,
        prefix: &'static str,
    ) -> (mpsc::Sender<Event>, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel(64);
        let p = self.clone();
        let task = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                match ev {
                    Event::Stage {
                        stage,
                        detail,
                        done,
                        ..
                    } => p.stage(&format!("{prefix}{stage}"), detail, done),
                    Event::Log(l) => p.log(l),
                    _ => {}
                }
            }
        });
        (tx, task)
    }
}

/// Timed stages of one request (each stage's duration is reported when it
/// ends, and `ready` carries the total).
pub struct Stages {
    events: mpsc::Sender<Event>,
    started: Instant,
    current: Option<(String, Instant)>,
}

impl Stages {
    pub fn new(events: mpsc::Sender<Event>) -> Stages {
        Stages {
            events,
            started: Instant::now(),
            current: None,
        }
    }

    async fn send(&self, ev: Event) {
        let _ = self.events.send(ev).await;
    }

    /// Starts a stage.
    pub async fn begin(&mut self, stage: &str, detail: impl Into<String>) {
        self.current = Some((stage.to_string(), Instant::now()));
        self.send(Event::Stage {
            stage: stage.into(),
            detail: detail.into(),
            elapsed_ms: 0,
            done: false,
        })
        .await;
    }

    /// Finishes the current stage with its duration.
    pub async fn end(&mut self, detail: impl Into<String>) {
        if let Some((stage, t)) = self.current.take() {
            let ms = t.elapsed().as_millis() as u64;
            tracing::info!(stage, ms, "stage done");
            self.send(Event::Stage {
                stage,
                detail: detail.into(),
                elapsed_ms: ms,
                done: true,
            })
            .await;
        }
    }

    pub async fn log(&self, line: impl Into<String>) {
        self.send(Event::Log(line.into())).await;
    }

    /// The final `ready` stage, carrying the total time.
    pub async fn ready(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.send(Event::Stage {
            stage: "ready".into(),
            detail: String::new(),
            elapsed_ms: ms,
            done: true,
        })
        .await;
    }
}
