//! The runner of a create: walks its steps in order and, when one fails, undoes what they
//! made in reverse.
//!
//! Around each step it does what every step needs and none should know of: the journal
//! entry (`begun`, each intent before its thing is made, each step reached), the checkpoint
//! event (`progress.step(name, step, {"elapsed_ms"})`) and its timing, and the testing hooks
//! ([`CreateOptions::fail_after`](super::CreateOptions), [`PAUSE_ENV`]). It knows nothing of
//! what a step makes: a step records an [`Intent`], and an [`Undo`] knows how to undo one.

use super::{Step, PAUSE_ENV};
use crate::cloud::journal::{Entry, Intent, Journal, Owner};
use crate::cloud::{CloudError, Progress};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Instant;

/// One step of a create. `M` is what the steps so far have made, read by the steps after.
pub trait Action<M> {
    /// Makes this step's thing. Whatever needs undoing is recorded in `intents` before it is
    /// made; a step that finds its thing already there made nothing and withdraws it.
    fn make(&self, made: &mut M, intents: &mut Intents<'_>) -> Result<(), CloudError>;
    /// Which step this is: its name in events and the journal, and for `fail_after`.
    fn step(&self) -> Step;
}

/// How a journaled [`Intent`] is undone. Also used by the reconcile on intents read back
/// from the journal of a dead process, so it is driven by the intent alone.
pub trait Undo {
    /// Undoes `i`, tolerating that it never came to exist. The error names what was left.
    fn undo(&self, i: &Intent) -> Result<(), String>;
}

/// Undoes `intents` in reverse; returns what could not be undone.
pub fn undo_in_reverse(intents: &[Intent], undo: &dyn Undo) -> Vec<String> {
    intents
        .iter()
        .rev()
        .filter_map(|i| undo.undo(i).err())
        .collect()
}

/// What one create has recorded that it is about to make: in memory, and in its journal
/// entry first (nothing is made unless it is recorded).
pub struct Intents<'a> {
    journal: Option<&'a Journal>,
    request: String,
    name: String,
    list: Vec<Intent>,
}

impl Intents<'_> {
    /// Records that the step is about to make `i`.
    pub fn intend(&mut self, i: Intent) -> Result<(), CloudError> {
        if let Some(j) = self.journal {
            j.update(&self.request, &self.name, |en| en.intents.push(i.clone()))
                .map_err(|e| journal_unwritable(j, e))?;
        }
        self.list.push(i);
        Ok(())
    }

    /// Takes back the last intent: its step found the thing already there and made nothing,
    /// so the rollback must not delete what existed before.
    pub fn withdraw(&mut self) {
        let Some(i) = self.list.pop() else {
            return;
        };
        if let Some(j) = self.journal {
            let r = j.update(&self.request, &self.name, |en| {
                if let Some(pos) = en.intents.iter().rposition(|x| x == &i) {
                    en.intents.remove(pos);
                }
            });
            if let Err(e) = r {
                tracing::warn!(name = self.name, "create journal: {e}");
            }
        }
    }
}

fn journal_unwritable(j: &Journal, e: std::io::Error) -> CloudError {
    CloudError::Internal(format!(
        "cannot write the create journal in {}: {e}",
        j.dir().display()
    ))
}

/// A create that failed, after its rollback.
pub struct Failed {
    pub error: CloudError,
    /// How many things were rolled back (or tried).
    pub undone: usize,
    /// What the rollback could not undo (left to the reconcile).
    pub left: Vec<String>,
}

/// One create in progress, from its journal entry to its last step or its rollback.
pub struct Run<'a> {
    progress: &'a dyn Progress,
    fail_after: Option<Step>,
    pause_after: Option<&'a str>,
    t0: Instant,
    intents: Intents<'a>,
    timings: BTreeMap<String, u64>,
}

impl<'a> Run<'a> {
    /// Starts a create whose journal entry (with a journal) is `entry`, written now.
    /// `fail_after` and `pause_after` stop it after that step (testing).
    pub fn begin(
        journal: Option<&'a Journal>,
        entry: Entry,
        progress: &'a dyn Progress,
        fail_after: Option<Step>,
        pause_after: Option<&'a str>,
    ) -> Result<Self, Failed> {
        let t0 = Instant::now();
        if let Some(j) = journal {
            j.write(&entry).map_err(|e| Failed {
                error: journal_unwritable(j, e),
                undone: 0,
                left: vec![],
            })?;
        }
        Ok(Self {
            progress,
            fail_after,
            pause_after,
            t0,
            intents: Intents {
                journal,
                request: entry.request,
                name: entry.name,
                list: Vec::new(),
            },
            timings: BTreeMap::new(),
        })
    }

    /// Makes every step in order, each followed by its checkpoint.
    pub fn walk<M>(&mut self, steps: &[&dyn Action<M>], made: &mut M) -> Result<(), CloudError> {
        for s in steps {
            s.make(made, &mut self.intents)?;
            self.checkpoint(s.step())?;
        }
        Ok(())
    }

    /// Milliseconds from the start of the create to each step reached.
    pub fn timings(&self) -> &BTreeMap<String, u64> {
        &self.timings
    }

    fn checkpoint(&mut self, step: Step) -> Result<(), CloudError> {
        let name = self.intents.name.as_str();
        let elapsed_ms = self.t0.elapsed().as_millis() as u64;
        self.timings.insert(step.name().into(), elapsed_ms);
        if let Some(j) = self.intents.journal {
            if let Err(e) = j.update(&self.intents.request, name, |en| {
                en.step = step.name().into()
            }) {
                tracing::warn!(name, "create journal: {e}");
            }
        }
        self.progress
            .step(name, step.name(), json!({ "elapsed_ms": elapsed_ms }));
        if self.pause_after == Some(step.name()) {
            tracing::warn!(name, "paused after step {} ({PAUSE_ENV})", step.name());
            loop {
                std::thread::park();
            }
        }
        if self.fail_after == Some(step) {
            return Err(CloudError::Injected(step.name()));
        }
        Ok(())
    }

    /// Undoes everything recorded, in reverse. Fully undone, the journal entry goes; else
    /// it is handed to the next reconcile (which retries the whole undo).
    pub fn roll_back(self, error: CloudError, undo: &dyn Undo) -> Failed {
        let Intents {
            journal,
            request,
            name,
            list,
        } = self.intents;
        let left = undo_in_reverse(&list, undo);
        if left.is_empty() {
            if let Some(j) = journal {
                j.remove_owned(&request, &name, &Owner::me());
            }
            tracing::warn!(name, error = %error, undone = list.len(), "create failed; rolled back");
        } else {
            // This process no longer owns the entry, and its error is returned now.
            if let Some(j) = journal {
                let _ = j.update(&request, &name, |en| {
                    en.owner = Owner { pid: 0, start: 0 };
                    en.reported = true;
                });
            }
            tracing::error!(name, error = %error, leftovers = ?left, "create failed; rollback left these behind (retried at the next reconcile)");
        }
        Failed {
            error,
            undone: list.len(),
            left,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::sync::Mutex;

    /// A step that records the file intent named after it, then (as told) finds its thing
    /// already there, or fails.
    struct Fake {
        step: Step,
        found: bool,
        fails: bool,
    }

    impl Action<Vec<Step>> for Fake {
        fn step(&self) -> Step {
            self.step
        }

        fn make(&self, made: &mut Vec<Step>, intents: &mut Intents<'_>) -> Result<(), CloudError> {
            intents.intend(intent(self.step))?;
            if self.found {
                intents.withdraw();
            }
            if self.fails {
                return Err(CloudError::Internal(format!("{} failed", self.step.name())));
            }
            made.push(self.step);
            Ok(())
        }
    }

    fn intent(s: Step) -> Intent {
        Intent::File {
            path: s.name().into(),
        }
    }

    /// Records what it is asked to undo, in order; refuses the paths in `refuse`.
    #[derive(Default)]
    struct Recorder {
        undone: RefCell<Vec<Intent>>,
        refuse: Vec<&'static str>,
    }

    impl Undo for Recorder {
        fn undo(&self, i: &Intent) -> Result<(), String> {
            self.undone.borrow_mut().push(i.clone());
            match i {
                Intent::File { path } if self.refuse.contains(&path.as_str()) => {
                    Err(format!("{path}: refused"))
                }
                _ => Ok(()),
            }
        }
    }

    /// Records the checkpoint events.
    #[derive(Default)]
    struct Events(Mutex<Vec<(String, String, serde_json::Value)>>);

    impl Progress for Events {
        fn step(&self, name: &str, step: &str, data: serde_json::Value) {
            let mut v = self.0.lock().unwrap();
            v.push((name.into(), step.into(), data));
        }
    }

    impl Events {
        fn steps(&self) -> Vec<String> {
            self.0.lock().unwrap().iter().map(|e| e.1.clone()).collect()
        }
    }

    fn entry() -> Entry {
        Entry {
            name: "web1".into(),
            request: "r1".into(),
            job: None,
            profile: "p".into(),
            uri: "test:///default".into(),
            owner: Owner::me(),
            step: "begun".into(),
            intents: vec![],
            done: None,
            reported: false,
        }
    }

    /// Every step; the one `fails` fails, those in `found` find their thing there.
    fn fakes(fails: Option<Step>, found: &[Step]) -> Vec<Fake> {
        Step::ALL
            .into_iter()
            .map(|step| Fake {
                step,
                found: found.contains(&step),
                fails: fails == Some(step),
            })
            .collect()
    }

    fn walk(run: &mut Run<'_>, fakes: &[Fake], made: &mut Vec<Step>) -> Result<(), CloudError> {
        let steps: Vec<&dyn Action<Vec<Step>>> =
            fakes.iter().map(|f| f as &dyn Action<Vec<Step>>).collect();
        run.walk(&steps, made)
    }

    /// A journal in a scratch directory (kept while the directory lives).
    fn scratch_journal() -> (tempfile::TempDir, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        (dir, j)
    }

    fn begin<'a>(
        j: Option<&'a Journal>,
        progress: &'a dyn Progress,
        fail_after: Option<Step>,
    ) -> Run<'a> {
        Run::begin(j, entry(), progress, fail_after, None)
            .ok()
            .expect("the journal entry is written")
    }

    fn journaled(j: &Journal) -> Vec<Entry> {
        let (entries, errors) = j.entries();
        assert!(errors.is_empty(), "{errors:?}");
        entries
    }

    #[test]
    fn walks_every_step_in_order_with_its_checkpoint_and_journal() {
        let (_dir, j) = scratch_journal();
        let events = Events::default();
        let mut run = begin(Some(&j), &events, None);
        let mut made = Vec::new();
        walk(&mut run, &fakes(None, &[]), &mut made).unwrap();
        assert_eq!(made, Step::ALL);
        let names: Vec<&str> = Step::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(events.steps(), names);
        for (name, _, data) in events.0.lock().unwrap().iter() {
            assert_eq!(name, "web1");
            assert!(data["elapsed_ms"].is_u64(), "{data}");
        }
        let timed: Vec<&str> = run.timings().keys().map(String::as_str).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(timed, sorted);
        let e = journaled(&j);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].step, Step::ALL[Step::ALL.len() - 1].name());
        let all: Vec<Intent> = Step::ALL.into_iter().map(intent).collect();
        assert_eq!(e[0].intents, all);
    }

    #[test]
    fn a_failure_at_a_step_undoes_it_and_every_step_before_in_reverse() {
        for (k, failing) in Step::ALL.into_iter().enumerate() {
            let (_dir, j) = scratch_journal();
            let events = Events::default();
            let mut run = begin(Some(&j), &events, None);
            let mut made = Vec::new();
            let err = walk(&mut run, &fakes(Some(failing), &[]), &mut made).unwrap_err();
            assert_eq!(made, Step::ALL[..k]);
            // The failing step's intent was journaled before it failed.
            assert_eq!(journaled(&j)[0].intents.len(), k + 1);
            let undo = Recorder::default();
            let failed = run.roll_back(err, &undo);
            let want: Vec<Intent> = Step::ALL[..=k].iter().rev().copied().map(intent).collect();
            assert_eq!(*undo.undone.borrow(), want, "failing at {}", failing.name());
            assert_eq!(failed.undone, k + 1);
            assert!(failed.left.is_empty());
            assert_eq!(
                failed.error.to_string(),
                format!("internal: {} failed", failing.name())
            );
            assert!(journaled(&j).is_empty(), "a full rollback closes the entry");
            let reached: Vec<&str> = Step::ALL[..k].iter().map(|s| s.name()).collect();
            assert_eq!(events.steps(), reached);
        }
    }

    #[test]
    fn a_step_that_found_its_thing_there_is_not_undone() {
        let (_dir, j) = scratch_journal();
        let mut run = begin(Some(&j), &crate::cloud::Quiet, None);
        let found = [Step::Nvram, Step::Defined];
        let err = walk(
            &mut run,
            &fakes(Some(Step::Defined), &found),
            &mut Vec::new(),
        )
        .unwrap_err();
        let want = [Step::Disks, Step::Seeded].map(intent);
        assert_eq!(
            journaled(&j)[0].intents,
            want,
            "withdrawn from the journal too"
        );
        let undo = Recorder::default();
        let failed = run.roll_back(err, &undo);
        assert_eq!(
            *undo.undone.borrow(),
            [Step::Seeded, Step::Disks].map(intent)
        );
        assert_eq!(failed.undone, 2);
    }

    #[test]
    fn an_injected_failure_stops_after_its_step_and_rolls_back() {
        let events = Events::default();
        let mut run = begin(None, &events, Some(Step::Seeded));
        let mut made = Vec::new();
        let err = walk(&mut run, &fakes(None, &[]), &mut made).unwrap_err();
        assert!(matches!(err, CloudError::Injected("seeded")), "{err:?}");
        assert_eq!(err.to_string(), "injected failure after step seeded");
        assert_eq!(made, [Step::Disks, Step::Nvram, Step::Seeded]);
        assert_eq!(events.steps(), ["disks", "nvram", "seeded"]);
        let undo = Recorder::default();
        run.roll_back(err, &undo);
        let want = [Step::Seeded, Step::Nvram, Step::Disks].map(intent);
        assert_eq!(*undo.undone.borrow(), want);
    }

    #[test]
    fn what_the_rollback_cannot_undo_is_left_to_the_reconcile() {
        let (_dir, j) = scratch_journal();
        let mut run = begin(Some(&j), &crate::cloud::Quiet, None);
        let err = walk(&mut run, &fakes(Some(Step::Defined), &[]), &mut Vec::new()).unwrap_err();
        let undo = Recorder {
            refuse: vec!["nvram"],
            ..Default::default()
        };
        let failed = run.roll_back(err, &undo);
        // The rest is still undone, in reverse.
        let want = [Step::Defined, Step::Seeded, Step::Nvram, Step::Disks].map(intent);
        assert_eq!(*undo.undone.borrow(), want);
        assert_eq!(failed.left, ["nvram: refused"]);
        assert_eq!(failed.undone, 4);
        let e = journaled(&j);
        assert_eq!(e.len(), 1, "the entry stays for the reconcile");
        assert_eq!(e[0].owner, Owner { pid: 0, start: 0 });
        assert!(e[0].reported);
        assert_eq!(e[0].intents, want.into_iter().rev().collect::<Vec<_>>());
    }

    #[test]
    fn undo_in_reverse_reports_each_refusal() {
        let undo = Recorder {
            refuse: vec!["disks", "started"],
            ..Default::default()
        };
        let intents: Vec<Intent> = Step::ALL.into_iter().map(intent).collect();
        let left = undo_in_reverse(&intents, &undo);
        assert_eq!(left, ["started: refused", "disks: refused"]);
        assert_eq!(undo.undone.borrow().len(), Step::ALL.len());
    }
}
