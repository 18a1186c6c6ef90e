//! The race rules of `docs/TAPRACER.md`, as pure code: no I/O, no clock.
//! Every call that depends on time takes `now`, so the rules are tested
//! deterministically; the server passes `Instant::now()`.
//!
//! A [`Game`] holds the players waiting on `play` (the lobby), the current
//! race (phase, entrants, their taps and tap buckets, the winner) and the
//! leaderboard. Calls that change the race's JSON ([`Game::race_json`]) mark
//! it dirty; the server broadcasts `race` when [`Game::take_dirty`] says so,
//! and `tick` when [`Game::tick`] returns a snapshot.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

/// Taps a bucket holds when full: a burst no human exceeds.
pub const BUCKET_TAPS: u64 = 5;
/// Taps per second the bucket refills.
pub const REFILL_PER_SEC: u64 = 15;
/// Entries of the leaderboard in the race's JSON.
pub const LEADERBOARD_LEN: usize = 10;

/// The bucket in credits: a tap costs [`TAP_COST`], and each microsecond
/// adds [`REFILL_PER_SEC`] credits, so the arithmetic is exact.
const TAP_COST: u64 = 1_000_000;
const BUCKET_CREDITS: u64 = BUCKET_TAPS * TAP_COST;

/// How a game runs: the CLI's `--track`, `--countdown-ms` and `--max-race-ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Taps to the line.
    pub track: u64,
    /// From `start` to the start signal.
    pub countdown: Duration,
    /// A race still running this long after the start signal ends without
    /// a winner.
    pub max_race: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            track: 50,
            countdown: Duration::from_millis(3000),
            max_race: Duration::from_millis(60_000),
        }
    }
}

/// Where a race is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for `start`.
    Lobby,
    /// `start` was taken; the start signal comes when the countdown ends.
    Countdown,
    /// Taps count.
    Racing,
    /// Someone crossed the line, or the race hit its maximum time.
    Finished,
}

impl Phase {
    /// The phase's name in the race's JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Lobby => "lobby",
            Phase::Countdown => "countdown",
            Phase::Racing => "racing",
            Phase::Finished => "finished",
        }
    }
}

/// Why `start` was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartError {
    /// A countdown or race is running.
    InProgress,
    /// Nobody is on `play`.
    NoRacers,
}

impl StartError {
    /// The `reason` of the error reply.
    pub fn reason(self) -> &'static str {
        match self {
            StartError::InProgress => "race in progress",
            StartError::NoRacers => "no racers",
        }
    }
}

/// The winner of a race.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Winner {
    /// The player's id.
    pub id: String,
    /// The player's name.
    pub name: String,
    /// Time from the start signal to the winning tap, in ms.
    pub ms: u64,
}

/// A `tick`: every entrant's count at `t` ms since the start signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    /// The race number.
    pub race: u64,
    /// Ms since the start signal.
    pub t: u64,
    /// `(id, taps)` of every entrant, in the order they joined.
    pub pos: Vec<(String, u64)>,
}

impl Tick {
    /// The `tick` payload: `{"race": N, "t": MS, "pos": {ID: TAPS}}`.
    pub fn to_json(&self) -> Value {
        let pos: Map<String, Value> = self
            .pos
            .iter()
            .map(|(id, taps)| (id.clone(), json!(taps)))
            .collect();
        json!({"race": self.race, "t": self.t, "pos": pos})
    }
}

/// A player on `play`. One socket may briefly hold two `play` channels (a
/// rejoin replaces the old one), so joins are counted per id.
#[derive(Debug, Clone)]
struct Waiting {
    id: String,
    name: String,
    seats: u32,
}

/// An entrant of the current (or last) race.
#[derive(Debug, Clone)]
struct Entrant {
    id: String,
    name: String,
    taps: u64,
    /// Tap credits, up to [`BUCKET_CREDITS`], as of `refilled`.
    credits: u64,
    refilled: Instant,
}

impl Entrant {
    fn new(id: &str, name: &str, now: Instant) -> Self {
        Entrant {
            id: id.to_owned(),
            name: name.to_owned(),
            taps: 0,
            credits: BUCKET_CREDITS,
            refilled: now,
        }
    }

    /// Refills the bucket up to `now` and takes one tap from it, if any.
    fn take_tap(&mut self, now: Instant) -> bool {
        let us = now.saturating_duration_since(self.refilled).as_micros();
        let added = u64::try_from(us)
            .unwrap_or(u64::MAX)
            .saturating_mul(REFILL_PER_SEC);
        self.credits = self.credits.saturating_add(added).min(BUCKET_CREDITS);
        self.refilled = self.refilled.max(now);
        if self.credits >= TAP_COST {
            self.credits -= TAP_COST;
            true
        } else {
            false
        }
    }
}

/// A name's record on the leaderboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    wins: u64,
    best_ms: u64,
}

/// The game: lobby, current race, leaderboard.
#[derive(Debug)]
pub struct Game {
    rules: Rules,
    race: u64,
    phase: Phase,
    lobby: Vec<Waiting>,
    entrants: Vec<Entrant>,
    /// The start signal: the countdown's end (set by `start`).
    signal: Option<Instant>,
    winner: Option<Winner>,
    records: HashMap<String, Record>,
    dirty: bool,
    /// A count changed since the last tick snapshot.
    moved: bool,
}

impl Game {
    /// A game in the lobby, race 0, with an empty leaderboard.
    pub fn new(rules: Rules) -> Self {
        Game {
            rules,
            race: 0,
            phase: Phase::Lobby,
            lobby: Vec::new(),
            entrants: Vec::new(),
            signal: None,
            winner: None,
            records: HashMap::new(),
            dirty: false,
            moved: false,
        }
    }

    /// The rules.
    pub fn rules(&self) -> Rules {
        self.rules
    }

    /// The phase at `now`.
    pub fn phase(&mut self, now: Instant) -> Phase {
        self.advance(now);
        self.phase
    }

    /// The race number (0 before the first start).
    pub fn race(&self) -> u64 {
        self.race
    }

    /// The winner of the last race, if it is finished and had one.
    pub fn winner(&self) -> Option<&Winner> {
        self.winner.as_ref()
    }

    /// The taps of entrant `id`, if it is one.
    pub fn taps(&self, id: &str) -> Option<u64> {
        self.entrants.iter().find(|e| e.id == id).map(|e| e.taps)
    }

    /// Whether the race's JSON changed since the last call (and clears it).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Player `id` joined `play`. During a countdown they are entered too;
    /// during a race they wait for the next one.
    pub fn join(&mut self, id: &str, name: &str, now: Instant) {
        self.advance(now);
        if let Some(w) = self.lobby.iter_mut().find(|w| w.id == id) {
            w.seats += 1;
            return;
        }
        self.lobby.push(Waiting {
            id: id.to_owned(),
            name: name.to_owned(),
            seats: 1,
        });
        match self.phase {
            Phase::Lobby => self.dirty = true,
            Phase::Countdown => {
                // Their bucket fills from the start signal, as everyone's.
                let signal = self.signal.unwrap_or(now);
                self.entrants.push(Entrant::new(id, name, signal));
                self.dirty = true;
            }
            Phase::Racing | Phase::Finished => {}
        }
    }

    /// Player `id` left `play` (one of its channels, if it had two). An
    /// entrant who leaves is off the track; a countdown or race left
    /// without entrants goes back to the lobby. A finished race keeps its
    /// results.
    pub fn leave(&mut self, id: &str, now: Instant) {
        self.advance(now);
        let Some(i) = self.lobby.iter().position(|w| w.id == id) else {
            return;
        };
        self.lobby[i].seats -= 1;
        if self.lobby[i].seats > 0 {
            return;
        }
        self.lobby.remove(i);
        match self.phase {
            Phase::Lobby => self.dirty = true,
            Phase::Countdown | Phase::Racing => {
                let before = self.entrants.len();
                self.entrants.retain(|e| e.id != id);
                if self.entrants.len() != before {
                    self.dirty = true;
                }
                if self.entrants.is_empty() {
                    self.phase = Phase::Lobby;
                    self.signal = None;
                    self.moved = false;
                    self.dirty = true;
                }
            }
            Phase::Finished => {}
        }
    }

    /// `start`: taken in the lobby or after a race, with at least one
    /// player on `play`, who all become entrants with 0 taps.
    pub fn start(&mut self, now: Instant) -> Result<(), StartError> {
        self.advance(now);
        match self.phase {
            Phase::Countdown | Phase::Racing => return Err(StartError::InProgress),
            Phase::Lobby | Phase::Finished => {}
        }
        if self.lobby.is_empty() {
            return Err(StartError::NoRacers);
        }
        // A countdown past the clock's range (no CLI allows one) starts at once.
        let signal = now.checked_add(self.rules.countdown).unwrap_or(now);
        self.race += 1;
        self.phase = Phase::Countdown;
        self.signal = Some(signal);
        self.winner = None;
        self.moved = false;
        self.entrants = self
            .lobby
            .iter()
            .map(|w| Entrant::new(&w.id, &w.name, signal))
            .collect();
        self.dirty = true;
        // A zero countdown starts the race at once.
        self.advance(now);
        Ok(())
    }

    /// A tap from `id`: counted only while racing, for an entrant, within
    /// its bucket. Whether it counted. The tap that reaches the line ends
    /// the race.
    pub fn tap(&mut self, id: &str, now: Instant) -> bool {
        self.advance(now);
        if self.phase != Phase::Racing {
            return false;
        }
        let ms = self.since_signal(now);
        let Some(e) = self.entrants.iter_mut().find(|e| e.id == id) else {
            return false;
        };
        if !e.take_tap(now) {
            return false;
        }
        e.taps += 1;
        self.moved = true;
        if e.taps >= self.rules.track {
            let winner = Winner {
                id: e.id.clone(),
                name: e.name.clone(),
                ms,
            };
            let record = self.records.entry(winner.name.clone()).or_insert(Record {
                wins: 0,
                best_ms: u64::MAX,
            });
            record.wins += 1;
            record.best_ms = record.best_ms.min(ms);
            self.winner = Some(winner);
            self.phase = Phase::Finished;
            self.dirty = true;
        }
        true
    }

    /// Moves the phases on to `now`, and while racing returns a snapshot
    /// of the positions if a count changed since the last one.
    pub fn tick(&mut self, now: Instant) -> Option<Tick> {
        self.advance(now);
        if self.phase != Phase::Racing || !std::mem::take(&mut self.moved) {
            return None;
        }
        Some(Tick {
            race: self.race,
            t: self.since_signal(now),
            pos: self
                .entrants
                .iter()
                .map(|e| (e.id.clone(), e.taps))
                .collect(),
        })
    }

    /// The countdown's end starts the race; the maximum time ends it.
    fn advance(&mut self, now: Instant) {
        let Some(signal) = self.signal else { return };
        if self.phase == Phase::Countdown && now >= signal {
            self.phase = Phase::Racing;
            self.dirty = true;
        }
        if self.phase == Phase::Racing
            && now.saturating_duration_since(signal) >= self.rules.max_race
        {
            self.phase = Phase::Finished;
            self.winner = None;
            self.dirty = true;
        }
    }

    fn since_signal(&self, now: Instant) -> u64 {
        self.signal
            .map_or(0, |s| millis(now.saturating_duration_since(s)))
    }

    /// The leaderboard: the top names by wins, then best time, then name.
    pub fn leaderboard(&self) -> Vec<(String, u64, u64)> {
        let mut rows: Vec<(String, u64, u64)> = self
            .records
            .iter()
            .map(|(name, r)| (name.clone(), r.wins, r.best_ms))
            .collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)).then(a.0.cmp(&b.0)));
        rows.truncate(LEADERBOARD_LEN);
        rows
    }

    /// The race's JSON (RACE in `docs/TAPRACER.md`) at `now`.
    pub fn race_json(&mut self, now: Instant) -> Value {
        self.advance(now);
        let racers: Vec<Value> = match self.phase {
            Phase::Lobby => self
                .lobby
                .iter()
                .map(|w| json!({"id": w.id, "name": w.name, "taps": 0}))
                .collect(),
            _ => self
                .entrants
                .iter()
                .map(|e| json!({"id": e.id, "name": e.name, "taps": e.taps}))
                .collect(),
        };
        let countdown_ms = match (self.phase, self.signal) {
            (Phase::Countdown, Some(signal)) => millis(signal.saturating_duration_since(now)),
            _ => 0,
        };
        let winner = match (&self.winner, self.phase) {
            (Some(w), Phase::Finished) => json!({"id": w.id, "name": w.name, "ms": w.ms}),
            _ => Value::Null,
        };
        let leaderboard: Vec<Value> = self
            .leaderboard()
            .into_iter()
            .map(|(name, wins, best_ms)| json!({"name": name, "wins": wins, "best_ms": best_ms}))
            .collect();
        json!({
            "race": self.race,
            "phase": self.phase.as_str(),
            "track": self.rules.track,
            "countdown_ms": countdown_ms,
            "racers": racers,
            "winner": winner,
            "leaderboard": leaderboard,
        })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn rules(track: u64) -> Rules {
        Rules {
            track,
            countdown: 1000 * MS,
            max_race: 10_000 * MS,
        }
    }

    /// A game with `players` joined and a race started at `t0`; returns the
    /// start signal.
    fn racing(game: &mut Game, players: &[&str], t0: Instant) -> Instant {
        for p in players {
            game.join(p, &format!("{p}-name"), t0);
        }
        game.start(t0).unwrap();
        let signal = t0 + game.rules().countdown;
        assert_eq!(game.phase(signal), Phase::Racing);
        signal
    }

    #[test]
    fn starts_in_the_lobby_with_race_zero() {
        let mut game = Game::new(Rules::default());
        let t0 = Instant::now();
        let race = game.race_json(t0);
        assert_eq!(
            race,
            json!({"race": 0, "phase": "lobby", "track": 50, "countdown_ms": 0,
                   "racers": [], "winner": null, "leaderboard": []})
        );
    }

    #[test]
    fn lobby_lists_players_in_join_order() {
        let mut game = Game::new(rules(10));
        let t0 = Instant::now();
        game.join("b", "bob", t0);
        game.join("a", "ann", t0);
        assert!(game.take_dirty());
        assert!(!game.take_dirty());
        let race = game.race_json(t0);
        assert_eq!(
            race["racers"],
            json!([{"id": "b", "name": "bob", "taps": 0}, {"id": "a", "name": "ann", "taps": 0}])
        );
    }

    #[test]
    fn start_needs_players_and_no_race_running() {
        let mut game = Game::new(rules(10));
        let t0 = Instant::now();
        assert_eq!(game.start(t0), Err(StartError::NoRacers));
        assert_eq!(game.race(), 0);
        game.join("a", "ann", t0);
        assert_eq!(game.start(t0), Ok(()));
        assert_eq!(game.race(), 1);
        assert_eq!(game.start(t0 + 10 * MS), Err(StartError::InProgress));
        assert_eq!(game.start(t0 + 1500 * MS), Err(StartError::InProgress));
        assert_eq!(StartError::InProgress.reason(), "race in progress");
        assert_eq!(StartError::NoRacers.reason(), "no racers");
    }

    #[test]
    fn countdown_counts_down_then_racing_begins() {
        let mut game = Game::new(rules(10));
        let t0 = Instant::now();
        game.join("a", "ann", t0);
        game.start(t0).unwrap();
        assert!(game.take_dirty());
        let race = game.race_json(t0 + 400 * MS);
        assert_eq!(race["phase"], "countdown");
        assert_eq!(race["countdown_ms"], 600);
        assert_eq!(game.tick(t0 + 999 * MS), None);
        assert!(!game.take_dirty());
        assert_eq!(game.tick(t0 + 1000 * MS), None);
        assert!(game.take_dirty(), "the phase change is a race broadcast");
        let race = game.race_json(t0 + 1000 * MS);
        assert_eq!(race["phase"], "racing");
        assert_eq!(race["countdown_ms"], 0);
    }

    #[test]
    fn zero_countdown_races_at_once() {
        let mut game = Game::new(Rules {
            countdown: Duration::ZERO,
            ..rules(10)
        });
        let t0 = Instant::now();
        game.join("a", "ann", t0);
        game.start(t0).unwrap();
        assert_eq!(game.phase(t0), Phase::Racing);
        assert!(game.tap("a", t0));
    }

    #[test]
    fn an_absurd_countdown_does_not_panic() {
        let mut game = Game::new(Rules {
            countdown: Duration::MAX,
            max_race: Duration::MAX,
            ..rules(10)
        });
        let t0 = Instant::now();
        game.join("a", "ann", t0);
        game.start(t0).unwrap();
        assert!(game.tap("a", t0 + MS));
        assert_eq!(game.phase(t0 + 100_000 * MS), Phase::Racing);
    }

    #[test]
    fn countdown_ignores_taps() {
        let mut game = Game::new(rules(10));
        let t0 = Instant::now();
        game.join("a", "ann", t0);
        assert!(!game.tap("a", t0), "no taps in the lobby");
        game.start(t0).unwrap();
        for i in 0..100 {
            assert!(!game.tap("a", t0 + i * 5 * MS));
        }
        assert_eq!(game.taps("a"), Some(0));
        // And the bucket is full at the start signal, not drained.
        let signal = t0 + 1000 * MS;
        for _ in 0..BUCKET_TAPS {
            assert!(game.tap("a", signal));
        }
        assert!(!game.tap("a", signal));
    }

    #[test]
    fn taps_move_and_tick_only_when_changed() {
        let mut game = Game::new(rules(10));
        let t0 = Instant::now();
        let signal = racing(&mut game, &["a", "b"], t0);
        assert_eq!(game.tick(signal), None, "nothing moved yet");
        assert!(game.tap("a", signal + 10 * MS));
        assert!(game.tap("a", signal + 20 * MS));
        let tick = game.tick(signal + 50 * MS).unwrap();
        assert_eq!(
            tick,
            Tick {
                race: 1,
                t: 50,
                pos: vec![("a".into(), 2), ("b".into(), 0)]
            }
        );
        assert_eq!(
            tick.to_json(),
            json!({"race": 1, "t": 50, "pos": {"a": 2, "b": 0}})
        );
        assert_eq!(game.tick(signal + 100 * MS), None, "no change, no tick");
        assert!(game.tap("b", signal + 120 * MS));
        assert_eq!(
            game.tick(signal + 150 * MS).unwrap().pos,
            vec![("a".into(), 2), ("b".into(), 1)]
        );
    }

    #[test]
    fn a_script_tapping_1000_times_a_second_gains_no_more_than_the_cap() {
        let mut game = Game::new(rules(1_000_000));
        let t0 = Instant::now();
        let signal = racing(&mut game, &["bot", "human"], t0);
        let mut counted = 0;
        // 3 s of one tap per ms.
        for ms in 0..3000 {
            if game.tap("bot", signal + ms * MS) {
                counted += 1;
            }
        }
        // 5 at once, then 15 a second: 5 + 15 * 2.999 s.
        assert_eq!(counted, 5 + 44);
        assert_eq!(game.taps("bot"), Some(49));
        // A human at 10 taps a second loses none.
        let mut human = 0;
        for i in 0..30 {
            if game.tap("human", signal + i * 100 * MS) {
                human += 1;
            }
        }
        assert_eq!(human, 30);
    }

    #[test]
    fn the_bucket_refills_but_never_beyond_five() {
        let mut game = Game::new(rules(1_000_000));
        let t0 = Instant::now();
        let signal = racing(&mut game, &["a"], t0);
        // A long pause refills only to the cap.
        let later = signal + 5000 * MS;
        let burst = (0..20).filter(|_| game.tap("a", later)).count();
        assert_eq!(burst, 5);
        // One tap's worth comes back after 1/15 s.
        assert!(!game.tap("a", later + 66 * MS));
        assert!(game.tap("a", later + 67 * MS));
    }

    #[test]
    fn first_to_the_line_wins_and_is_on_the_leaderboard() {
        let mut game = Game::new(rules(5));
        let t0 = Instant::now();
        let signal = racing(&mut game, &["a", "b"], t0);
        assert!(game.tap("b", signal + 10 * MS));
        for i in 0..5 {
            assert!(game.tap("a", signal + (100 + i) * MS));
        }
        game.take_dirty();
        assert_eq!(game.phase(signal + 105 * MS), Phase::Finished);
        let w = game.winner().unwrap();
        assert_eq!((w.id.as_str(), w.name.as_str(), w.ms), ("a", "a-name", 104));
        // Taps after the finish count for nobody.
        assert!(!game.tap("b", signal + 200 * MS));
        let race = game.race_json(signal + 300 * MS);
        assert_eq!(race["phase"], "finished");
        assert_eq!(
            race["winner"],
            json!({"id": "a", "name": "a-name", "ms": 104})
        );
        assert_eq!(
            race["racers"],
            json!([{"id": "a", "name": "a-name", "taps": 5}, {"id": "b", "name": "b-name", "taps": 1}])
        );
        assert_eq!(
            race["leaderboard"],
            json!([{"name": "a-name", "wins": 1, "best_ms": 104}])
        );
    }

    #[test]
    fn a_tie_is_decided_by_the_order_taps_arrive() {
        let mut game = Game::new(rules(3));
        let t0 = Instant::now();
        let signal = racing(&mut game, &["a", "b"], t0);
        for _ in 0..2 {
            assert!(game.tap("a", signal));
            assert!(game.tap("b", signal));
        }
        // Both reach the line at the same instant: b's tap came first.
        assert!(game.tap("b", signal + 50 * MS));
        assert!(!game.tap("a", signal + 50 * MS));
        assert_eq!(game.winner().unwrap().id, "b");
        assert_eq!(game.taps("a"), Some(2));
    }

    #[test]
    fn joining_during_the_countdown_enters_the_race() {
        let mut game = Game::new(rules(5));
        let t0 = Instant::now();
        game.join("a", "ann", t0);
        game.start(t0).unwrap();
        game.take_dirty();
        game.join("b", "bob", t0 + 500 * MS);
        assert!(game.take_dirty());
        let race = game.race_json(t0 + 500 * MS);
        assert_eq!(race["racers"].as_array().unwrap().len(), 2);
        assert!(game.tap("b", t0 + 1000 * MS));
        assert_eq!(game.taps("b"), Some(1));
    }

    #[test]
    fn joining_during_the_race_waits_for_the_next() {
        let mut game = Game::new(rules(5));
        let t0 = Instant::now();
        let signal = racing(&mut game, &["a"], t0);
        game.take_dirty();
        game.join("b", "bob", signal + 10 * MS);
        assert!(!game.take_dirty(), "the race's JSON did not change");
        assert!(!game.tap("b", signal + 20 * MS));
        assert_eq!(game.taps("b"), None);
        let race = game.race_json(signal + 20 * MS);
        assert_eq!(
            race["racers"],
            json!([{"id": "a", "name": "a-name", "taps": 0}])
        );
        // The next race has them.
        game.leave("a", signal + 30 * MS);
        game.start(signal + 40 * MS).unwrap();
        let race = game.race_json(signal + 40 * MS);
        assert_eq!(
            race["racers"],
            json!([{"id": "b", "name": "bob", "taps": 0}])
        );
    }

    #[test]
    fn leaving_takes_an_entrant_off_and_an_empty_race_back_to_the_lobby() {
        let mut game = Game::new(rules(5));
        let t0 = Instant::now();
        let signal = racing(&mut game, &["a", "b"], t0);
        assert!(game.tap("a", signal));
        game.take_dirty();
        game.leave("a", signal + 10 * MS);
        assert!(game.take_dirty());
        assert_eq!(game.taps("a"), None);
        // a's tap is still due in a tick, without a.
        let tick = game.tick(signal + 20 * MS).unwrap();
        assert_eq!(tick.pos, vec![("b".into(), 0)]);
        assert_eq!(game.phase(signal + 20 * MS), Phase::Racing);
        game.leave("b", signal + 30 * MS);
        assert!(game.take_dirty());
        assert_eq!(game.phase(signal + 30 * MS), Phase::Lobby);
        let race = game.race_json(signal + 30 * MS);
        assert_eq!(race["racers"], json!([]));
        assert_eq!(race["winner"], Value::Null);
        assert_eq!(race["race"], 1, "race numbers count starts");
    }

    #[test]
    fn leaving_during_the_countdown_empties_it() {
        let mut game = Game::new(rules(5));
        let t0 = Instant::now();
        game.join("a", "ann", t0);
        game.start(t0).unwrap();
        game.leave("a", t0 + 100 * MS);
        assert_eq!(game.phase(t0 + 2000 * MS), Phase::Lobby);
        assert_eq!(game.start(t0 + 2000 * MS), Err(StartError::NoRacers));
    }

    #[test]
    fn a_second_seat_keeps_the_player_until_both_leave() {
        let mut game = Game::new(rules(5));
        let t0 = Instant::now();
        game.join("a", "ann", t0);
        game.join("a", "ann", t0);
        game.leave("a", t0);
        assert_eq!(game.race_json(t0)["racers"].as_array().unwrap().len(), 1);
        game.leave("a", t0);
        assert_eq!(game.race_json(t0)["racers"], json!([]));
        // Leaving twice, or someone unknown, is harmless.
        game.leave("a", t0);
        game.leave("zed", t0);
    }

    #[test]
    fn max_race_time_ends_without_a_winner() {
        let mut game = Game::new(rules(5));
        let t0 = Instant::now();
        let signal = racing(&mut game, &["a"], t0);
        assert!(game.tap("a", signal));
        game.take_dirty();
        assert_eq!(game.phase(signal + 9999 * MS), Phase::Racing);
        assert!(!game.take_dirty());
        assert_eq!(game.tick(signal + 10_000 * MS), None);
        assert!(game.take_dirty());
        assert_eq!(game.phase(signal + 10_000 * MS), Phase::Finished);
        assert!(!game.tap("a", signal + 10_001 * MS));
        let race = game.race_json(signal + 10_001 * MS);
        assert_eq!(race["winner"], Value::Null);
        assert_eq!(race["leaderboard"], json!([]));
        assert_eq!(
            race["racers"],
            json!([{"id": "a", "name": "a-name", "taps": 1}])
        );
    }

    #[test]
    fn a_new_race_starts_after_the_finish() {
        let mut game = Game::new(rules(1));
        let t0 = Instant::now();
        let signal = racing(&mut game, &["a", "b"], t0);
        assert!(game.tap("b", signal + 5 * MS));
        assert_eq!(game.phase(signal + 5 * MS), Phase::Finished);
        game.leave("a", signal + 6 * MS);
        // Results stay as they were once finished.
        assert_eq!(
            game.race_json(signal + 6 * MS)["racers"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        game.join("c", "cat", signal + 7 * MS);
        let t1 = signal + 10 * MS;
        game.start(t1).unwrap();
        let race = game.race_json(t1);
        assert_eq!(race["race"], 2);
        assert_eq!(race["phase"], "countdown");
        assert_eq!(race["countdown_ms"], 1000);
        assert_eq!(race["winner"], Value::Null);
        assert_eq!(
            race["racers"],
            json!([{"id": "b", "name": "b-name", "taps": 0}, {"id": "c", "name": "cat", "taps": 0}])
        );
        // The leaderboard survives.
        assert_eq!(race["leaderboard"][0]["name"], "b-name");
        let signal2 = t1 + 1000 * MS;
        assert!(game.tap("c", signal2 + 7 * MS));
        assert_eq!(game.winner().unwrap().ms, 7);
    }

    #[test]
    fn leaderboard_orders_by_wins_then_best_time_then_name() {
        let mut game = Game::new(Rules {
            track: 1,
            countdown: Duration::ZERO,
            max_race: 10_000 * MS,
        });
        let mut now = Instant::now();
        let mut win = |game: &mut Game, name: &str, ms: u64| {
            game.join(name, name, now);
            game.start(now).unwrap();
            assert!(game.tap(name, now + Duration::from_millis(ms)));
            game.leave(name, now + Duration::from_millis(ms));
            now += 100_000 * MS;
        };
        win(&mut game, "cat", 300);
        win(&mut game, "cat", 900);
        win(&mut game, "bob", 200);
        win(&mut game, "ann", 200);
        win(&mut game, "dan", 100);
        for i in 0..10 {
            win(&mut game, &format!("z{i:02}"), 5000);
        }
        let board = game.leaderboard();
        assert_eq!(board.len(), LEADERBOARD_LEN);
        assert_eq!(board[0], ("cat".into(), 2, 300));
        assert_eq!(board[1], ("dan".into(), 1, 100));
        assert_eq!(board[2], ("ann".into(), 1, 200));
        assert_eq!(board[3], ("bob".into(), 1, 200));
        assert_eq!(board[4].0, "z00");
        assert_eq!(board[9].0, "z05");
    }
}
