//! The whole-table check of a suppressed report: what someone could work out of each hidden
//! small count from *every* published cell at once, by linear programming.
//!
//! Rules 1 to 3 of the module above judge each hidden cell by its column and by its own group.
//! Summed over several groups, the columns' totals and the inequalities between measures can
//! still pin a count those rules let pass (entered 1, 9 and 3 beside housing 0, 9 and 3, with
//! totals 13 and 12: the last two groups entered at least 12 between them, so the first
//! exactly 1). Here each hidden cell is a variable; the constraints are everything the report
//! and the rule tell:
//!
//! - each column's cells add up to its total;
//! - in each group and in the totals, `entered` is at least `completed` plus `dropped_out` and
//!   at least each count of participations with a job, housing or a re-offence;
//! - a hidden count is 1 to 9 if small and at least 10 if not (the attacker is assumed to know
//!   which, as in rule 2), and no more than the whole table holds;
//! - a cell hidden to protect a small one of its column (rule 2 takes the smallest published
//!   first) is no larger than any cell of its column still published, and smaller than those
//!   before it (the attacker is assumed to know which cells these are, as in rule 2); cells
//!   hidden for their row or by this check are not bounded so.
//!
//! A hidden small count is *pinned* when its least and greatest possible values, rounded inward
//! to whole numbers, meet. The bounds are those of the linear relaxation: it allows fractions,
//! so its range contains every whole-number one and a cell it does not pin is, as far as these
//! constraints go, not pinned in whole numbers either, except where only fractions lie between
//! two whole values (the property test checks with whole-number variables). A solve that fails
//! counts as pinned: the answer is then to hide more, never to publish on a guess.

use std::collections::BTreeSet;

use microlp::{ComparisonOp, OptimizationDirection, Problem, Variable};

use super::{
    AT_MOST_ENTERED, COMPLETED, DROPPED_OUT, ENTERED, MEASURES, SUPPRESSION_THRESHOLD, is_small,
    protector_most,
};

/// A cell of the table: a group's measure, or a total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Place {
    Group(usize, usize),
    Total(usize),
}

/// The table as published: every true count, which are hidden, and which of the hidden group
/// cells were hidden for a reason other than protecting a small cell of their column.
pub(super) struct Published<'a> {
    pub rows: &'a [[u64; MEASURES]],
    pub totals: &'a [u64; MEASURES],
    pub hidden: &'a [[bool; MEASURES]],
    pub total_hidden: &'a [bool; MEASURES],
    pub for_row: &'a [[bool; MEASURES]],
}

impl Published<'_> {
    fn value(&self, place: Place) -> u64 {
        match place {
            Place::Group(row, measure) => self.rows[row][measure],
            Place::Total(measure) => self.totals[measure],
        }
    }

    fn is_hidden(&self, place: Place) -> bool {
        match place {
            Place::Group(row, measure) => self.hidden[row][measure],
            Place::Total(measure) => self.total_hidden[measure],
        }
    }

    /// Every hidden small count, groups first.
    fn hidden_small(&self) -> impl Iterator<Item = Place> + '_ {
        let groups = (0..self.rows.len())
            .flat_map(|row| (0..MEASURES).map(move |measure| Place::Group(row, measure)));
        let totals = (0..MEASURES).map(Place::Total);
        groups
            .chain(totals)
            .filter(|&place| self.is_hidden(place) && is_small(self.value(place)))
    }

    /// The first hidden small count that the published cells pin to one value, if any.
    #[cfg(test)]
    pub fn first_pinned(&self, whole_numbers: bool) -> Option<Place> {
        self.first_pinned_but(whole_numbers, &mut BTreeSet::new())
    }

    /// [`Self::first_pinned`], skipping the cells in `cleared` and adding those it finds free.
    /// Hiding more only ever widens what a hidden cell may be (a published number becomes a
    /// range that holds it), so a cell once found free stays free while the suppression goes on.
    pub fn first_pinned_but(
        &self,
        whole_numbers: bool,
        cleared: &mut BTreeSet<Place>,
    ) -> Option<Place> {
        self.clear_together(whole_numbers, cleared);
        for place in self.hidden_small().collect::<Vec<_>>() {
            if cleared.contains(&place) {
                continue;
            }
            if self.is_pinned(place, whole_numbers) {
                return Some(place);
            }
            cleared.insert(place);
        }
        None
    }

    /// Frees many cells with few solves: the greatest sum of the open cells puts some of them
    /// at least one above their true value, and the least sum some at least one below, which
    /// frees each such cell (its true value is possible too). Repeats while a round frees a
    /// tenth of what is open; the rest are checked one by one.
    fn clear_together(&self, whole_numbers: bool, cleared: &mut BTreeSet<Place>) {
        loop {
            let open: Vec<Place> = self
                .hidden_small()
                .filter(|place| !cleared.contains(place))
                .collect();
            if open.len() < 8 {
                return;
            }
            let before = cleared.len();
            for direction in [
                OptimizationDirection::Maximize,
                OptimizationDirection::Minimize,
            ] {
                let Some((_, values)) = self.solve(&open, direction, whole_numbers) else {
                    return;
                };
                for (&place, value) in open.iter().zip(values) {
                    let truth = self.value(place) as f64;
                    if (value - truth).abs() >= 1.0 - 1e-6 {
                        cleared.insert(place);
                    }
                }
            }
            if (cleared.len() - before) * 10 < open.len() {
                return;
            }
        }
    }

    /// Whether `place` (hidden) can be worked out exactly from what is published. Its true
    /// value is always possible, so a greatest value at least one above it (or a least one
    /// below) frees it: the second solve is needed only when the first does not.
    pub fn is_pinned(&self, place: Place, whole_numbers: bool) -> bool {
        let value = self.value(place) as f64;
        // With room for the solver's tolerance.
        let Some(most) = self.extreme(place, OptimizationDirection::Maximize, whole_numbers) else {
            return true;
        };
        if most >= value + 1.0 - 1e-6 {
            return false;
        }
        match self.extreme(place, OptimizationDirection::Minimize, whole_numbers) {
            Some(least) => least > value - 1.0 + 1e-6,
            None => true,
        }
    }

    /// The most a hidden large group cell that protects a small one of its column may hold, as
    /// rule 2 chose it: the smallest published non-zero cell of the column when it was taken
    /// (on a tie, the first group), so no larger than any published now, and smaller than one
    /// before it. `None` for other cells.
    fn protector_bound(&self, place: Place) -> Option<u64> {
        let Place::Group(row, measure) = place else {
            return None;
        };
        if is_small(self.rows[row][measure]) || self.for_row[row][measure] {
            return None;
        }
        let published = (0..self.rows.len())
            .filter(|&other| !self.hidden[other][measure] && self.rows[other][measure] > 0)
            .map(|other| (other, self.rows[other][measure]));
        protector_most(row, published)
    }

    /// The least or greatest value of `target` over everything the report allows, or `None`
    /// if the solver could not say.
    fn extreme(
        &self,
        target: Place,
        direction: OptimizationDirection,
        whole_numbers: bool,
    ) -> Option<f64> {
        self.solve(&[target], direction, whole_numbers)
            .map(|(objective, _)| objective)
    }

    /// The least or greatest sum of the cells `targets` over everything the report allows, with
    /// each target's value where it is reached; `None` if the solver could not say.
    fn solve(
        &self,
        targets: &[Place],
        direction: OptimizationDirection,
        whole_numbers: bool,
    ) -> Option<(f64, Vec<f64>)> {
        let mut variables: Vec<Option<Variable>> = vec![None; targets.len()];
        // No count exceeds what the whole table holds: always true, and keeps every variable
        // finite.
        let cap = self.rows.iter().flatten().chain(self.totals).sum::<u64>() + 1;
        let mut problem = Problem::new(direction);
        let mut term = |place: Place| -> Term {
            let value = self.value(place);
            if !self.is_hidden(place) {
                return Term::Known(value as f64);
            }
            let (least, most) = if value == 0 {
                (0, 0)
            } else if is_small(value) {
                (1, SUPPRESSION_THRESHOLD - 1)
            } else {
                let most = self.protector_bound(place).unwrap_or(cap).min(cap);
                (SUPPRESSION_THRESHOLD, most.max(SUPPRESSION_THRESHOLD))
            };
            let target = targets.iter().position(|&target| target == place);
            let objective = if target.is_some() { 1.0 } else { 0.0 };
            let variable = if whole_numbers {
                let most = i32::try_from(most).unwrap_or(i32::MAX);
                problem.add_integer_var(objective, (least as i32, most))
            } else {
                problem.add_var(objective, (least as f64, most as f64))
            };
            if let Some(target) = target {
                variables[target] = Some(variable);
            }
            Term::Unknown(variable)
        };
        let groups: Vec<[Term; MEASURES]> = (0..self.rows.len())
            .map(|row| std::array::from_fn(|measure| term(Place::Group(row, measure))))
            .collect();
        let totals: [Term; MEASURES] = std::array::from_fn(|measure| term(Place::Total(measure)));

        // Each column adds up to its total.
        for measure in 0..MEASURES {
            let column = groups
                .iter()
                .map(|row| (&row[measure], 1.0))
                .chain(std::iter::once((&totals[measure], -1.0)));
            constrain(&mut problem, column, ComparisonOp::Eq);
        }
        // In every group and in the totals, `entered` bounds the other measures.
        for row in groups.iter().chain(std::iter::once(&totals)) {
            let ended = [
                (&row[ENTERED], 1.0),
                (&row[COMPLETED], -1.0),
                (&row[DROPPED_OUT], -1.0),
            ];
            constrain(&mut problem, ended, ComparisonOp::Ge);
            for measure in AT_MOST_ENTERED {
                let pair = [(&row[ENTERED], 1.0), (&row[measure], -1.0)];
                constrain(&mut problem, pair, ComparisonOp::Ge);
            }
        }
        let solution = problem.solve().ok()?.into_solution().ok()?;
        let values = variables
            .iter()
            .map(|variable| variable.map_or(0.0, |variable| solution.var_value(variable)))
            .collect();
        Some((solution.objective(), values))
    }
}

/// How many cells [`what_to_hide`] tries one by one before it settles for the first.
const CANDIDATES_TRIED: usize = 16;

/// What to hide next so that the pinned cell `pinned` is pinned no longer: the first of the
/// published non-zero cells that does so alone, tried in the order that costs the report least
/// where it usually works (the pinned cell's own column, smallest first, then its total; its
/// own group's measures; the other totals; everything else), or, if none does alone, the first
/// of them, and the next round goes on from there. `None` when nothing is left to hide.
pub(super) fn what_to_hide(published: &Published<'_>, pinned: Place) -> Option<Place> {
    let rows = published.rows.len();
    // A total whose column hides nothing is its published cells' sum: hiding it hides nothing
    // (and rule 2 publishes it again).
    let column_hides = |measure: usize| published.hidden.iter().any(|row| row[measure]);
    let open = |place: Place| {
        !published.is_hidden(place)
            && published.value(place) > 0
            && match place {
                Place::Total(measure) => column_hides(measure),
                Place::Group(..) => true,
            }
    };
    let by_value = |mut places: Vec<Place>| {
        places.retain(|&place| open(place));
        places.sort_by_key(|&place| published.value(place));
        places
    };
    let (column, row) = match pinned {
        Place::Group(row, measure) => (measure, Some(row)),
        Place::Total(measure) => (measure, None),
    };
    let mut candidates = by_value((0..rows).map(|row| Place::Group(row, column)).collect());
    candidates.extend(by_value(vec![Place::Total(column)]));
    if let Some(row) = row {
        candidates.extend(by_value(
            (0..MEASURES).map(|m| Place::Group(row, m)).collect(),
        ));
    }
    candidates.extend(by_value((0..MEASURES).map(Place::Total).collect()));
    let everything = (0..rows).flat_map(|row| (0..MEASURES).map(move |m| Place::Group(row, m)));
    candidates.extend(by_value(everything.collect()));
    let mut seen = BTreeSet::new();
    candidates.retain(|place| seen.insert(*place));
    let first = *candidates.first()?;
    let unpins = |candidate: Place| {
        let mut hidden = published.hidden.to_vec();
        let mut total_hidden = *published.total_hidden;
        let mut for_row = published.for_row.to_vec();
        match candidate {
            // Hidden here, it is known only to be at least 10 (see `for_row`).
            Place::Group(row, measure) => {
                hidden[row][measure] = true;
                for_row[row][measure] = true;
            }
            Place::Total(measure) => total_hidden[measure] = true,
        }
        let tried = Published {
            hidden: &hidden,
            total_hidden: &total_hidden,
            for_row: &for_row,
            ..*published
        };
        !tried.is_pinned(pinned, false)
    };
    let found = candidates
        .into_iter()
        .take(CANDIDATES_TRIED)
        .find(|&candidate| unpins(candidate));
    Some(found.unwrap_or(first))
}

/// A cell in a constraint: published (a number) or hidden (a variable).
enum Term {
    Known(f64),
    Unknown(Variable),
}

/// Adds `sum of coefficient * term  (op)  0`, with the published terms moved to the right-hand
/// side; a constraint of published cells alone holds already and is left out.
fn constrain<'t>(
    problem: &mut Problem,
    terms: impl IntoIterator<Item = (&'t Term, f64)>,
    op: ComparisonOp,
) {
    let mut unknowns = Vec::new();
    let mut known = 0.0;
    for (term, coefficient) in terms {
        match term {
            Term::Known(value) => known += coefficient * value,
            Term::Unknown(variable) => unknowns.push((*variable, coefficient)),
        }
    }
    if !unknowns.is_empty() {
        problem.add_constraint(unknowns, op, -known);
    }
}
