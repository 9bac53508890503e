//! The kernel side as the daemon holds it: every map handle, in one place. Attribution,
//! decisions and sinks never see these.

use std::{collections::HashMap, os::fd::AsFd as _};

use agent_common::{config::DaemonState, maps, session::SessionEntry, stats::Stat};
use anyhow::{Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray, RingBuf},
};

use super::policy_maps::PolicyMaps;
use crate::proto::Counter;

pub struct KernelMaps {
    /// Taken out while a drain runs (records are handled in place, without a copy).
    pub ring: Option<RingBuf<MapData>>,
    /// Session of every tracked process.
    pub sessions: BpfHashMap<MapData, u32, SessionEntry>,
    stats: PerCpuArray<MapData, u64>,
    /// Which daemon and generation of programs act (`DaemonState`).
    daemon: Array<MapData, DaemonState>,
    /// Compiled profiles and rules.
    pub policy: PolicyMaps,
    /// The profiles' `match:` selectors.
    pub selectors: super::selectors::SelectorMaps,
    /// A second handle on the session map, for the refusal layer's thread (taken once).
    pub sessions_for_refusal: Option<BpfHashMap<MapData, u32, SessionEntry>>,
}

impl KernelMaps {
    /// Takes every map the daemon uses out of the loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing"))
        };
        let sessions_map = take(maps::SESSIONS)?;
        let second = match &sessions_map {
            Map::HashMap(d) => MapData::from_fd(d.fd().as_fd().try_clone_to_owned()?)?,
            _ => return Err(anyhow!("map {} is not a hash map", maps::SESSIONS)),
        };
        let sessions = BpfHashMap::try_from(sessions_map)?;
        let sessions_for_refusal = Some(BpfHashMap::try_from(Map::HashMap(second))?);
        let stats = PerCpuArray::try_from(take(maps::STATS)?)?;
        let ring = RingBuf::try_from(take(maps::EVENTS)?)?;
        let daemon_map = take(maps::DAEMON)?;
        let daemon_for_policy = match &daemon_map {
            Map::Array(d) => MapData::from_fd(d.fd().as_fd().try_clone_to_owned()?)?,
            _ => return Err(anyhow!("map {} is not an array", maps::DAEMON)),
        };
        let daemon = Array::try_from(daemon_map)?;
        let mut policy = PolicyMaps::take(ebpf)?;
        policy.epoch = Some(Array::try_from(Map::Array(daemon_for_policy))?);
        Ok(Self {
            ring: Some(ring),
            sessions,
            stats,
            daemon,
            policy,
            selectors: super::selectors::SelectorMaps::take(ebpf)?,
            sessions_for_refusal,
        })
    }

    /// Hands the kernel side to this daemon: its programs act from this write on, and
    /// the previous generation's stop (one map update: never none, never both).
    pub fn take_over(&mut self, generation: u64, flags: u32) -> Result<()> {
        // A new epoch: repeats the previous programs counted are judged again under
        // this daemon's rules.
        let epoch = self.daemon.get(&0, 0).map_or(0, |s| s.policy_epoch);
        let state = DaemonState {
            generation,
            tgid: std::process::id(),
            alive: 1,
            flags,
            policy_epoch: epoch.wrapping_add(1),
        };
        self.daemon
            .set(0, state, 0)
            .map_err(|e| anyhow!("writing the DAEMON map: {e}"))
    }

    /// Says the daemon is gone before an unload: the programs hold no more processes
    /// for lookups (none would answer) and stand in for the refusal layer until they
    /// are detached.
    pub fn say_gone(&mut self) -> Result<()> {
        let mut state = self
            .daemon
            .get(&0, 0)
            .map_err(|e| anyhow!("reading the DAEMON map: {e}"))?;
        state.alive = 0;
        self.daemon
            .set(0, state, 0)
            .map_err(|e| anyhow!("writing the DAEMON map: {e}"))
    }

    /// Snapshot of the session map (tgid → session id).
    pub fn sessions_snapshot(&self) -> HashMap<u32, u64> {
        self.sessions
            .iter()
            .filter_map(|r| r.ok())
            .map(|(tgid, e)| (tgid, e.session_id))
            .collect()
    }

    /// The session `tgid` is tracked in, if any.
    pub fn session_of(&self, tgid: u32) -> Option<u64> {
        self.sessions.get(&tgid, 0).ok().map(|e| e.session_id)
    }

    /// A per-CPU counter and its total.
    pub fn counter(&self, stat: Stat) -> Counter {
        let per_cpu: Vec<u64> = self
            .stats
            .get(&(stat as u32), 0)
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default();
        Counter {
            name: stat.name().to_owned(),
            total: per_cpu.iter().sum(),
            per_cpu,
        }
    }
}
