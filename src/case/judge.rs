//! Judging computed states against a case's expected ones, one step at a time.

use super::{Case, ExpectedState, StepState, TolerancePair};

/// Relative tolerance of the learning-rate comparison: expected rates are float32 values, the crate's
/// are computed in f64 and rounded to float32, so they agree to an ulp or two (1e-6 is about 8 ulps);
/// a schedule that is off by a step is off by far more.
pub const LEARNING_RATE_RTOL: f64 = 1e-6;

/// The outcome of [`Case::judge`] or [`Judge::finish`].
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Every element within tolerance, every step number and learning rate as expected.
    pub pass: bool,
    /// Largest absolute error.
    pub max_abs: f64,
    /// Largest relative error (over non-zero expected values).
    pub max_rel: f64,
    /// The first problem found, if any.
    pub worst: Option<String>,
}

impl Verdict {
    fn fail(&mut self, why: String) {
        self.pass = false;
        self.worst.get_or_insert(why);
    }

    fn arrays<'a, 'b>(
        &mut self,
        label: &str,
        expected: impl ExactSizeIterator<Item = Option<&'a Vec<f32>>>,
        actual: &[impl AsArray],
        tol: TolerancePair,
    ) {
        if expected.len() != actual.len() {
            self.fail(format!(
                "{label}: {} arrays computed, {} expected",
                actual.len(),
                expected.len()
            ));
            return;
        }
        for (k, (e, a)) in expected.zip(actual).enumerate() {
            // `null` in the case: this variable has no such slot, nothing to compare.
            let Some(e) = e else { continue };
            let Some(a) = a.array() else {
                self.fail(format!(
                    "{label}[{k}]: not computed (the variable has no such slot)"
                ));
                continue;
            };
            if e.len() != a.len() {
                self.fail(format!(
                    "{label}[{k}]: {} values computed, {} expected",
                    a.len(),
                    e.len()
                ));
                continue;
            }
            for (i, (&ev, &av)) in e.iter().zip(a).enumerate() {
                let (ev, av) = (f64::from(ev), f64::from(av));
                let d = (av - ev).abs();
                let ok = if ev.is_finite() {
                    av.is_finite() && d <= tol.atol + tol.rtol * ev.abs()
                } else {
                    // A non-finite expectation (a recorded NaN or overflow) is met only by the same
                    // non-finite value.
                    (ev.is_nan() && av.is_nan()) || ev == av
                };
                if !ok {
                    self.fail(format!("{label}[{k}][{i}]: expected {ev}, got {av}"));
                }
                if d.is_finite() {
                    self.max_abs = self.max_abs.max(d);
                    if ev != 0.0 {
                        self.max_rel = self.max_rel.max(d / ev.abs());
                    }
                }
            }
        }
    }
}

/// Whether a computed learning rate matches the expected one.
fn same_rate(actual: f64, expected: f64) -> bool {
    actual == expected
        || (actual.is_nan() && expected.is_nan())
        || (actual - expected).abs() <= LEARNING_RATE_RTOL * expected.abs()
}

/// Judges a run step by step as its states arrive, keeping nothing of them: what makes judging a
/// streaming run possible without holding every step.
#[derive(Debug)]
pub struct Judge<'a> {
    case: &'a Case,
    expected: &'a [ExpectedState],
    seen: usize,
    verdict: Verdict,
}

impl<'a> Judge<'a> {
    /// A judge for `case`, or `None` when the case has no expected values.
    pub fn new(case: &'a Case) -> Option<Judge<'a>> {
        Some(Judge {
            case,
            expected: case.expected.as_deref()?,
            seen: 0,
            verdict: Verdict {
                pass: true,
                max_abs: 0.0,
                max_rel: 0.0,
                worst: None,
            },
        })
    }

    /// Compares the next computed state with the next expected one: the step number and the learning
    /// rate when the case gives them, every variable and every listed slot.
    pub fn step(&mut self, a: &StepState) {
        let index = self.seen;
        self.seen += 1;
        let v = &mut self.verdict;
        let Some(e) = self.expected.get(index) else {
            v.fail(format!(
                "step {}: computed, but the case expects {} steps",
                a.step,
                self.expected.len()
            ));
            return;
        };
        let t = e.step.unwrap_or(index as u64 + 1);
        if let Some(es) = e.step {
            if es != a.step {
                v.fail(format!(
                    "expected[{index}].step is {es}, the optimizer reports step {}",
                    a.step
                ));
            }
        }
        if let Some(el) = e.learning_rate {
            match a.learning_rate {
                Some(al) if same_rate(al, el) => {}
                Some(al) => v.fail(format!(
                    "step {t} learning_rate: expected {el}, got {al} (relative tolerance \
                     {LEARNING_RATE_RTOL})"
                )),
                None => v.fail(format!("step {t} learning_rate: not reported")),
            }
        }
        let tol = &self.case.tolerance;
        v.arrays(
            &format!("step {t} variables"),
            e.variables.iter().map(Some),
            &a.variables,
            tol.for_variables(),
        );
        for (slot, exp) in &e.slots {
            match a.slots.get(slot) {
                Some(act) => v.arrays(
                    &format!("step {t} {slot}"),
                    exp.iter().map(Option::as_ref),
                    act,
                    tol.for_slot(slot),
                ),
                None if exp.iter().all(Option::is_none) => {}
                None => v.fail(format!("step {t}: slot {slot} not computed")),
            }
        }
    }

    /// The verdict; fewer computed steps than expected fail.
    pub fn finish(mut self) -> Verdict {
        if self.seen < self.expected.len() {
            self.verdict.fail(format!(
                "{} steps computed, {} expected",
                self.seen,
                self.expected.len()
            ));
        }
        self.verdict
    }
}

impl Case {
    /// Compares `actual` with the case's `expected` (step numbers and learning rates when given, every
    /// variable and every listed slot at every step). `None` when the case has no expected values.
    pub fn judge(&self, actual: &[StepState]) -> Option<Verdict> {
        let mut j = Judge::new(self)?;
        for a in actual {
            j.step(a);
        }
        Some(j.finish())
    }
}

/// A computed array: a variable's values, or a slot's (`None` where the variable has no such slot).
trait AsArray {
    fn array(&self) -> Option<&Vec<f32>>;
}

impl AsArray for Vec<f32> {
    fn array(&self) -> Option<&Vec<f32>> {
        Some(self)
    }
}

impl AsArray for Option<Vec<f32>> {
    fn array(&self) -> Option<&Vec<f32>> {
        self.as_ref()
    }
}
