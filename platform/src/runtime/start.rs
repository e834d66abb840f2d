//! Calling a driver's `start_turn` and wiring its sink to the pump's queue.
//!
//! A driver that claims `quick_start` is called on the request's own thread: no hand-off to the
//! blocking pool and back (two thread switches a turn). That thread also runs the pump, so the
//! sink must never wait there: events emitted on it inside `start_turn` are held in order (up to
//! a bound) and queued once it returns, while the driver's own threads wait their turn behind
//! them; any other driver is called on a blocking-pool thread, where its sink may wait for room
//! as before.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use karta_driver_api::{Done, Event, EventKind, HostDriver, HostTurn, TurnRequest, TurnStatus};
use tokio::sync::mpsc;

use super::pump::error_event;
use super::running::Running;

/// What the driver's sink carries to the pump.
type Item = Result<Event, String>;

/// Events a quick-start driver may emit from inside `start_turn` at least (the turn's queue
/// size when larger): they cannot wait for room on the thread that also drains them.
const HELD_EVENTS: usize = 256;

/// Starts the turn on `driver` (`quick`: it claims `quick_start`); its events go to `tx` in the
/// order it emits them. A driver that cannot start sends one `harness_start_failed` error
/// event instead. Returns once the driver has started and what it emitted meanwhile is queued:
/// poll it beside the pump that drains `tx`, not before.
pub(crate) async fn start<D>(
    driver: Arc<D>,
    quick: bool,
    request: TurnRequest,
    tx: mpsc::Sender<Item>,
    running: Arc<Running>,
) where
    D: AsRef<HostDriver> + Send + Sync + 'static,
{
    if quick {
        start_inline((*driver).as_ref(), &request, tx, &running).await;
        return;
    }
    let starter = tx.clone();
    tokio::task::spawn_blocking(move || {
        let started = (*driver).as_ref().start_turn(&request, move |ev| {
            // Fast path without blocking; a full queue makes the driver's thread wait. The
            // receiver is gone only when the pump has finished; nothing to do then.
            if let Err(mpsc::error::TrySendError::Full(ev)) = tx.try_send(ev) {
                let _ = tx.blocking_send(ev);
            }
        });
        match started {
            Ok(handle) => keep_handle(&running, handle, false),
            Err(message) => {
                let _ = starter.blocking_send(Ok(error_event("harness_start_failed", message)));
            }
        }
    });
}

/// Keeps the driver's handle; a cancel that came first goes to it now (from a runtime thread,
/// on the blocking pool: a driver's cancel may wait, or emit).
fn keep_handle(running: &Arc<Running>, handle: HostTurn, on_runtime: bool) {
    *running.handle.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    if running.is_cancelled() {
        if on_runtime {
            running.cancel_soon();
        } else {
            running.cancel();
        }
    }
}

/// Events held while a quick-start driver's `start_turn` runs (and until they are queued).
struct Held {
    /// `None` once everything held has gone to the queue and events go there directly.
    events: Option<Vec<Item>>,
    /// The thread that calls `start_turn`: it also drains the queue, so it never waits; what
    /// it emits past the bound is dropped.
    caller: std::thread::ThreadId,
    /// How many of the held events the calling thread emitted.
    from_caller: usize,
    /// How many were dropped past the bound.
    dropped: usize,
}

/// The held events and the driver threads waiting for room in them.
struct Gate {
    held: Mutex<Held>,
    room: Condvar,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands an event to the held list; gives it back when events go to the queue directly.
    /// The calling thread's events count against the bound on their own (the driver's threads
    /// cannot use it up); a driver's own thread waits while the list is full.
    fn hold(&self, ev: Item, bound: usize) -> Option<Item> {
        let mut h = self.lock();
        let on_caller = std::thread::current().id() == h.caller;
        loop {
            let Held {
                events,
                from_caller,
                dropped,
                ..
            } = &mut *h;
            match events {
                None => return Some(ev),
                Some(list) if on_caller => {
                    if *from_caller < bound {
                        *from_caller += 1;
                        list.push(ev);
                    } else {
                        *dropped += 1;
                    }
                    return None;
                }
                Some(list) if list.len() < bound => {
                    list.push(ev);
                    return None;
                }
                Some(_) => h = self.room.wait(h).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    /// Takes what is held (and how many were dropped), or, when nothing is, opens the gate.
    fn take(&self) -> Option<(Vec<Item>, usize)> {
        let mut h = self.lock();
        let dropped = std::mem::take(&mut h.dropped);
        let taken = match h.events.as_mut() {
            Some(list) if !list.is_empty() || dropped > 0 => Some((std::mem::take(list), dropped)),
            _ => {
                h.events = None;
                None
            }
        };
        self.room.notify_all();
        taken
    }
}

/// Opens the gate however the flush ends (a closed queue included), so no driver thread
/// waits on it for ever.
struct Open<'a>(&'a Gate);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.lock().events = None;
        self.0.room.notify_all();
    }
}

async fn start_inline(
    driver: &HostDriver,
    request: &TurnRequest,
    tx: mpsc::Sender<Item>,
    running: &Arc<Running>,
) {
    let bound = HELD_EVENTS.max(tx.max_capacity());
    let gate = Arc::new(Gate {
        held: Mutex::new(Held {
            events: Some(Vec::new()),
            caller: std::thread::current().id(),
            from_caller: 0,
            dropped: 0,
        }),
        room: Condvar::new(),
    });
    let (sink_gate, sink_tx) = (gate.clone(), tx.clone());
    let started = driver.start_turn(request, move |ev| {
        if let Some(ev) = sink_gate.hold(ev, bound) {
            // The gate is open: on the driver's own thread, which may wait for room.
            if let Err(mpsc::error::TrySendError::Full(ev)) = sink_tx.try_send(ev) {
                let _ = sink_tx.blocking_send(ev);
            }
        }
    });
    match started {
        Ok(handle) => keep_handle(running, handle, true),
        Err(message) => {
            if let Some(list) = gate.lock().events.as_mut() {
                list.push(Ok(error_event("harness_start_failed", message)));
            }
        }
    }
    // Queue what was held, then let the driver's threads queue directly. Whatever they emit
    // meanwhile is held too and goes with the next round, so the order stays the driver's.
    let _open = Open(&gate);
    while let Some((events, dropped)) = gate.take() {
        for ev in events {
            if tx.send(ev).await.is_err() {
                return;
            }
        }
        if dropped > 0 {
            tracing::error!(
                dropped,
                bound,
                "a quick-start driver emitted too many events inside start_turn"
            );
            let message = format!(
                "the driver emitted more than {bound} events before start_turn returned; {dropped} were dropped"
            );
            let _ = tx.send(Ok(error_event("driver_protocol", message))).await;
            // Its `done` may be among the dropped: the turn ends here, failed, and the driver
            // is told to stop (what it sends later finds the pump gone).
            let done = Event::new(EventKind::Done(Done {
                status: TurnStatus::Failed,
                stop_reason: Some("error".into()),
                ..Default::default()
            }));
            let _ = tx.send(Ok(done)).await;
            running.cancel_soon();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use karta_driver_api::{
        Capabilities, Discovery, Done, Driver, DriverFactory, DriverInfo, EventKind, HostContext,
        HostInfo, Part, Sink, Turn,
    };
    use serde_json::Value;

    use super::*;

    /// Emits `inside` text events from inside `start_turn`, then `after` more and `done` from a
    /// thread of its own (or `done` inside too when `after` is 0). `fail` refuses to start.
    /// With `lead`, the thread starts first and `start_turn` emits only after `lead` ms.
    struct Burst {
        inside: usize,
        after: usize,
        fail: bool,
        lead: u64,
    }

    struct Over;

    impl Turn for Over {
        fn resolve_input(&self, _: &str, _: karta_driver_api::Decision) -> Result<(), String> {
            Err("none".into())
        }
        fn cancel(&self) {}
    }

    fn text(sink: &Sink, i: usize) {
        sink.emit_kind(EventKind::Text {
            part: Part::Text {
                text: i.to_string(),
            },
        });
    }

    fn done(sink: &Sink) {
        sink.emit_kind(EventKind::Done(Done::default()));
    }

    impl Driver for Burst {
        fn describe(_: &HostInfo) -> DriverInfo {
            let mut caps = Capabilities::none();
            caps.quick_start = true;
            DriverInfo::new("burst").with_capabilities(caps)
        }
        fn new(_: &HostContext, s: &Value) -> Result<Self, String> {
            let n = |k: &str| s[k].as_u64().unwrap_or(0) as usize;
            Ok(Burst {
                inside: n("inside"),
                after: n("after"),
                fail: s["fail"].as_bool().unwrap_or(false),
                lead: s["lead"].as_u64().unwrap_or(0),
            })
        }
        fn name(&self) -> String {
            "burst".into()
        }
        fn detect(&self, _: &Path) -> u32 {
            0
        }
        fn discover(&self, _: &Path) -> Result<Discovery, String> {
            Ok(Discovery::default())
        }
        fn start_turn(&self, _: TurnRequest, sink: Sink) -> Result<Box<dyn Turn>, String> {
            if self.fail {
                return Err("no harness here".into());
            }
            let (from, to) = (self.inside, self.inside + self.after);
            let own = sink.clone();
            let play = move || {
                (from..to).for_each(|i| text(&own, i));
                done(&own);
            };
            if self.lead > 0 {
                std::thread::spawn(play);
                std::thread::sleep(std::time::Duration::from_millis(self.lead));
                (0..self.inside).for_each(|i| text(&sink, i));
                return Ok(Box::new(Over));
            }
            (0..self.inside).for_each(|i| text(&sink, i));
            if self.after == 0 {
                done(&sink);
            } else {
                std::thread::spawn(play);
            }
            Ok(Box::new(Over))
        }
    }

    struct Loaded(HostDriver);

    impl AsRef<HostDriver> for Loaded {
        fn as_ref(&self) -> &HostDriver {
            &self.0
        }
    }

    /// Runs a turn of `Burst` with a queue of `queue` slots, draining it beside the start as
    /// the pump does; answers the texts received, the codes of error events, and whether the
    /// turn was cancelled.
    fn run(settings: Value, quick: bool, queue: usize) -> (Vec<usize>, Vec<String>, bool) {
        let ctx = HostContext::new(crate::drivers::host_info(), "/nonexistent");
        let driver = DriverFactory::linked::<Burst>()
            .build(&ctx, &settings)
            .expect("driver");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let (tx, mut rx) = mpsc::channel(queue);
            let (running, _control) = Running::new(0, "a".into(), Default::default(), 8);
            let started = start(
                Arc::new(Loaded(driver)),
                quick,
                TurnRequest::default(),
                tx,
                running.clone(),
            );
            let drain = async {
                let (mut texts, mut errors) = (Vec::new(), Vec::new());
                while let Some(ev) = rx.recv().await {
                    match ev.expect("event").kind {
                        EventKind::Text {
                            part: Part::Text { text },
                        } => texts.push(text.parse().expect("number")),
                        EventKind::Error(e) => errors.push(e.code),
                        EventKind::Done(_) => break,
                        _ => {}
                    }
                }
                (texts, errors)
            };
            let ((), (texts, errors)) = tokio::join!(started, drain);
            (texts, errors, running.is_cancelled())
        })
    }

    #[test]
    fn events_emitted_inside_a_quick_start_wait_for_the_pump_in_order() {
        // More events than the queue holds, all from inside `start_turn` on the pump's thread.
        let (texts, errors, cancelled) = run(serde_json::json!({"inside": 40}), true, 1);
        assert_eq!(texts, (0..40).collect::<Vec<_>>());
        assert!(errors.is_empty() && !cancelled);
    }

    #[test]
    fn events_from_the_drivers_thread_keep_their_place_after_the_held_ones() {
        // Queued one at a time, what was held takes a while to go; the driver's thread, far
        // ahead (also while `start_turn` still runs), waits for room rather than losing events.
        let (texts, errors, _) = run(
            serde_json::json!({"inside": HELD_EVENTS - 10, "after": 5000}),
            true,
            1,
        );
        assert_eq!(texts, (0..HELD_EVENTS + 4990).collect::<Vec<_>>());
        assert!(errors.is_empty());
    }

    #[test]
    fn too_many_events_inside_a_quick_start_fail_the_turn_instead_of_growing() {
        let (texts, errors, cancelled) =
            run(serde_json::json!({"inside": HELD_EVENTS + 10}), true, 1);
        // The held ones arrive, then the error, and the host ends the turn (its `done` was
        // among the dropped).
        assert_eq!(texts, (0..HELD_EVENTS).collect::<Vec<_>>());
        assert_eq!(errors, ["driver_protocol"]);
        assert!(cancelled);
    }

    #[test]
    fn the_drivers_threads_cannot_use_up_what_start_turn_may_hold() {
        // The driver's thread fills the held list (and waits) before `start_turn` emits; what
        // `start_turn` emits still has its own room.
        let (mut texts, errors, cancelled) = run(
            serde_json::json!({"inside": 10, "after": HELD_EVENTS * 2, "lead": 50}),
            true,
            1,
        );
        assert!(errors.is_empty() && !cancelled, "{errors:?}");
        texts.sort_unstable();
        assert_eq!(texts, (0..10 + HELD_EVENTS * 2).collect::<Vec<_>>());
    }

    #[test]
    fn a_quick_start_that_fails_reports_it_as_an_event() {
        let (texts, errors, _) = run(serde_json::json!({"fail": true}), true, 1);
        assert!(texts.is_empty());
        assert_eq!(errors, ["harness_start_failed"]);
    }

    #[test]
    fn other_drivers_start_on_a_blocking_thread_and_may_wait_for_room() {
        let (texts, errors, _) = run(serde_json::json!({"inside": 20, "after": 100}), false, 1);
        assert_eq!(texts, (0..120).collect::<Vec<_>>());
        assert!(errors.is_empty());
    }
}
