//! The integrity check behind `job-archiver check`: every record decodes, every job has one
//! index entry that matches its state, queued and archiving jobs have one queue entry, and
//! the counters agree with the records.

use std::collections::{HashMap, HashSet};

use crate::job::JobState;
use crate::store::record::decode_record;
use crate::store::{state_from_byte, CheckReport, StateCounts, Store, StoreError};

impl Store {
    /// Reads every record and index entry and reports each disagreement: records that do not
    /// decode, index or queue entries without a matching record, jobs listed under two states,
    /// and counters that differ from the records. Scans the whole store.
    pub fn check(&self) -> Result<CheckReport, StoreError> {
        let mut report = CheckReport::default();
        let mut states: HashMap<String, JobState> = Default::default();
        let mut actual = StateCounts::default();
        // Records that do not decode are reported once; their index and queue entries and the
        // counters cannot be checked against them, so those checks skip them.
        let mut undecodable: HashSet<String> = HashSet::new();
        for entry in self.jobs.iter() {
            let (key, value) = entry?;
            let key = String::from_utf8_lossy(&key).into_owned();
            report.records += 1;
            match decode_record(&key, &value) {
                Ok(record) => {
                    *actual.get_mut(record.state) += 1;
                    states.insert(key, record.state);
                }
                Err(err) => {
                    report.problems.push(err.to_string());
                    undecodable.insert(key);
                }
            }
        }
        let mut indexed: HashMap<String, JobState> = Default::default();
        for entry in self.by_state.iter() {
            let (key, _) = entry?;
            let Some(state) = key.first().and_then(|byte| state_from_byte(*byte)) else {
                report
                    .problems
                    .push(format!("state index: entry with unknown state byte {:?}", key.first()));
                continue;
            };
            let id = String::from_utf8_lossy(&key[1..]).into_owned();
            if let Some(other) = indexed.insert(id.clone(), state) {
                report.problems.push(format!("job {id}: listed as both {other} and {state}"));
            }
            if undecodable.contains(&id) {
                continue;
            }
            match states.get(&id) {
                Some(recorded) if *recorded == state => (),
                Some(recorded) => report
                    .problems
                    .push(format!("job {id}: record says {recorded}, index says {state}")),
                None => report
                    .problems
                    .push(format!("job {id}: index entry ({state}) without a record")),
            }
        }
        for (id, state) in &states {
            if !indexed.contains_key(id) {
                report
                    .problems
                    .push(format!("job {id}: {state} record missing from the state index"));
            }
        }
        let mut entries: HashMap<String, u32> = Default::default();
        for entry in self.queue.iter().chain(self.delayed.iter()) {
            let (_, value) = entry?;
            *entries.entry(String::from_utf8_lossy(&value).into_owned()).or_default() += 1;
        }
        for (id, count) in &entries {
            if undecodable.contains(id) {
                continue;
            }
            match states.get(id) {
                Some(JobState::Queued | JobState::Archiving) if *count == 1 => (),
                Some(state) => report.problems.push(format!(
                    "job {id}: {state} with {count} queue entries, expected {}",
                    usize::from(matches!(state, JobState::Queued | JobState::Archiving))
                )),
                None => report.problems.push(format!("queue entry for job {id} without a record")),
            }
        }
        for (id, state) in &states {
            if matches!(state, JobState::Queued | JobState::Archiving) && !entries.contains_key(id)
            {
                report.problems.push(format!("job {id}: {state} but not in the queue"));
            }
        }
        let counted = self.counts()?;
        for state in JobState::ALL {
            if undecodable.is_empty() && counted.get(state) != actual.get(state) {
                report.problems.push(format!(
                    "count of {state} jobs is {}, but {} records are {state}",
                    counted.get(state),
                    actual.get(state)
                ));
            }
        }
        report.counts = actual;
        Ok(report)
    }
}
