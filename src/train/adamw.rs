//! `AdamW`: Adam with decoupled weight decay, exactly as PyTorch's `torch.optim.AdamW` (the
//! optimiser timm trains ViTs with), one step over named parameter tensors.
//!
//! ```text
//! for each parameter p with gradient g (t = step number, from 1):
//!     p = p * (1 - lr * wd)                     decoupled decay (wd = 0 for "no decay" tensors)
//!     m = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
//!     p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//! ```
//!
//! ```
//! use patchgraph::train::AdamW;
//! let mut opt = AdamW::new(0.1, 0.0);
//! let mut p = vec![1.0f32, -2.0];
//! opt.begin_step();
//! opt.update(0, &mut p, &[0.5, -0.5], true);
//! // first step: m / (1 - b1) = g, v / (1 - b2) = g^2, so each moves by lr * sign(g)
//! assert!((p[0] - 0.9).abs() < 1e-6 && (p[1] + 1.9).abs() < 1e-6);
//! ```

/// AdamW's state: hyper-parameters, the step count and one `(m, v)` pair per parameter slot.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate (set it per step for a schedule).
    pub lr: f32,
    /// `beta1`, `beta2` (PyTorch: 0.9, 0.999).
    pub betas: (f32, f32),
    /// Added to the denominator (PyTorch: 1e-8).
    pub eps: f32,
    /// Decoupled weight decay for tensors that take it.
    pub weight_decay: f32,
    step: u64,
    moments: Vec<(Vec<f32>, Vec<f32>)>,
    /// Slots restored by [`AdamW::load_state`] and not yet checked against the model's
    /// parameters by a step ([`AdamW::end_step`]).
    restored: Option<Restored>,
}

/// What a restored state is checked against at its first step.
#[derive(Clone, Debug, PartialEq)]
struct Restored {
    /// The file, for errors.
    what: String,
    /// The restored slot count.
    slots: usize,
    /// Slots the model visited so far in this step, and mismatches seen (slot, state, model).
    visited: usize,
    mismatches: Vec<(usize, usize, usize)>,
}

impl AdamW {
    /// PyTorch's defaults for betas and eps.
    pub fn new(lr: f32, weight_decay: f32) -> Self {
        AdamW { lr, betas: (0.9, 0.999), eps: 1e-8, weight_decay, step: 0, moments: Vec::new(), restored: None }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Starts a step: call once, then [`AdamW::update`] for every parameter slot.
    pub fn begin_step(&mut self) {
        self.step += 1;
    }

    /// Updates parameter slot `slot` (the same slot for the same tensor every step) from its
    /// gradient; `decay` says whether weight decay applies (timm: not to biases, norms,
    /// position embeddings and class tokens).
    pub fn update(&mut self, slot: usize, param: &mut [f32], grad: &[f32], decay: bool) {
        debug_assert_eq!(param.len(), grad.len());
        if let Some(r) = &mut self.restored {
            r.visited = r.visited.max(slot + 1);
            if let Some((m, _)) = self.moments.get(slot).filter(|(m, _)| m.len() != param.len()) {
                r.mismatches.push((slot, m.len(), param.len()));
            }
        }
        if self.moments.len() <= slot {
            self.moments.resize_with(slot + 1, Default::default);
        }
        let (m, v) = &mut self.moments[slot];
        if m.len() != param.len() {
            *m = vec![0.0; param.len()];
            *v = vec![0.0; param.len()];
        }
        let t = self.step.max(1) as i32;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(t);
        let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
        let step_size = self.lr / bc1;
        let shrink = if decay { 1.0 - self.lr * self.weight_decay } else { 1.0 };
        for (((p, g), mi), vi) in param.iter_mut().zip(grad).zip(m.iter_mut()).zip(v.iter_mut()) {
            *p *= shrink;
            *mi = b1 * *mi + (1.0 - b1) * g;
            *vi = b2 * *vi + (1.0 - b2) * g * g;
            *p -= step_size * *mi / (vi.sqrt() / bc2_sqrt + self.eps);
        }
    }
}

impl AdamW {
    /// Ends a step. After [`AdamW::load_state`], the first step checks the restored state
    /// against the parameters the model visited: a slot count or a slot size that differs is an
    /// [`crate::Error::Checkpoint`] naming each slot (the state belongs to another model), where
    /// [`AdamW::update`] alone would silently start that slot's moments from zero.
    pub fn end_step(&mut self) -> crate::Result<()> {
        let Some(r) = self.restored.take() else { return Ok(()) };
        let mut problems: Vec<String> = r
            .mismatches
            .iter()
            .map(|(slot, state, model)| format!("slot {slot}: {state} moments for a parameter of {model} values"))
            .collect();
        if r.visited != r.slots {
            problems.push(format!("{} slots in the state, the model has {} parameter tensors", r.slots, r.visited));
        }
        if problems.is_empty() { Ok(()) } else { Err(crate::Error::Checkpoint { path: r.what, problems }) }
    }

    /// The optimiser state as named tensors (`adamw.m.{slot}`, `adamw.v.{slot}`) with the step
    /// count and hyper-parameters in the metadata, for resuming.
    pub fn state_dict(&self) -> crate::Result<crate::checkpoint::TensorMap> {
        let mut map = crate::checkpoint::TensorMap::default();
        for (slot, (m, v)) in self.moments.iter().enumerate() {
            map.insert(format!("adamw.m.{slot}"), vec![m.len()], m.clone())?;
            map.insert(format!("adamw.v.{slot}"), vec![v.len()], v.clone())?;
        }
        map.set_metadata("adamw.step", self.step.to_string());
        map.set_metadata("adamw.slots", self.moments.len().to_string());
        Ok(map)
    }

    /// Restores [`AdamW::state_dict`]'s state (hyper-parameters stay as set).
    pub fn load_state(&mut self, mut map: crate::checkpoint::TensorMap, what: &str) -> crate::Result<()> {
        let meta = |key: &str| -> crate::Result<u64> {
            map.metadata().get(key).and_then(|v| v.parse().ok()).ok_or_else(|| crate::Error::Format {
                path: what.to_string(),
                reason: format!("optimiser state without a `{key}` metadata entry"),
            })
        };
        let (step, slots) = (meta("adamw.step")?, meta("adamw.slots")?);
        // Two tensors per slot: a count beyond what the file holds is refused before anything
        // of that size is allocated.
        let held = map.remaining().len() / 2;
        let slots = usize::try_from(slots).ok().filter(|&s| s <= held).ok_or_else(|| crate::Error::Format {
            path: what.to_string(),
            reason: format!("`adamw.slots` says {slots} slots, the file holds tensors for at most {held}"),
        })?;
        let mut moments = Vec::with_capacity(slots);
        for slot in 0..slots {
            let m = map.take_any(&format!("adamw.m.{slot}"))?.data;
            let v = map.take_any(&format!("adamw.v.{slot}"))?.data;
            if m.len() != v.len() {
                return Err(crate::Error::Format {
                    path: what.to_string(),
                    reason: format!("slot {slot}: m and v differ in size"),
                });
            }
            moments.push((m, v));
        }
        map.finish()?;
        self.step = step;
        self.moments = moments;
        self.restored = Some(Restored { what: what.to_string(), slots, visited: 0, mismatches: Vec::new() });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two steps worked by hand with lr 0.01, wd 0.1, betas (0.9, 0.999), eps 1e-8, g = 0.2
    /// then -0.1 on p = 1 (with decay) and the same without decay.
    #[test]
    fn two_steps_by_hand() {
        let mut opt = AdamW::new(0.01, 0.1);
        let (mut a, mut b) = (vec![1.0f32], vec![1.0f32]);
        // step 1: p = 1 * (1 - 0.001) = 0.999; m = 0.02, v = 0.00004; m^ = 0.2, sqrt(v^) = 0.2
        //         p = 0.999 - 0.01 * 0.2 / (0.2 + 1e-8) = 0.989 (no decay: 0.99)
        opt.begin_step();
        opt.update(0, &mut a, &[0.2], true);
        opt.update(1, &mut b, &[0.2], false);
        assert!((a[0] - 0.989).abs() < 1e-6, "{}", a[0]);
        assert!((b[0] - 0.99).abs() < 1e-6, "{}", b[0]);
        // step 2: m = 0.9 * 0.02 - 0.01 = 0.008, v = 0.999 * 0.00004 + 0.001 * 0.01 = 0.00004996
        //         m^ = 0.008 / 0.19 = 0.0421053, v^ = 0.00004996 / 0.001999 = 0.0249925
        //         update = 0.01 * 0.0421053 / 0.1580902 = 0.0026634
        opt.begin_step();
        opt.update(1, &mut b, &[-0.1], false);
        assert!((b[0] - (0.99 - 0.002_663_4)).abs() < 2e-6, "{}", b[0]);
        assert_eq!(opt.steps(), 2);
        let mut again = AdamW::new(0.01, 0.1);
        again.load_state(opt.state_dict().unwrap(), "state").unwrap();
        again.restored = None;
        assert_eq!(again, opt);
    }

    /// A slot count in the metadata beyond the tensors present is a typed error (it used to
    /// reach `Vec::with_capacity` and abort), and a state whose slots do not fit the model's
    /// parameters fails at the first step instead of silently restarting the moments.
    #[test]
    fn restored_state_is_checked() {
        let mut opt = AdamW::new(0.01, 0.0);
        opt.begin_step();
        opt.update(0, &mut [1.0, 2.0], &[0.1, 0.1], true);
        opt.update(1, &mut [1.0], &[0.1], true);
        let state = opt.state_dict().unwrap();
        for slots in ["3", "18446744073709551615", "-1", "x"] {
            let mut bad = state.clone();
            bad.set_metadata("adamw.slots", slots);
            let err = AdamW::new(0.01, 0.0).load_state(bad, "opt.safetensors").unwrap_err();
            assert!(matches!(err, crate::Error::Format { .. }), "{slots}: {err}");
        }
        // the same model: fine
        let mut same = AdamW::new(0.01, 0.0);
        same.load_state(state.clone(), "opt").unwrap();
        same.begin_step();
        same.update(0, &mut [1.0, 2.0], &[0.1, 0.1], true);
        same.update(1, &mut [1.0], &[0.1], true);
        same.end_step().unwrap();
        // a parameter of another size, and a missing slot
        let mut other = AdamW::new(0.01, 0.0);
        other.load_state(state.clone(), "opt").unwrap();
        other.begin_step();
        other.update(0, &mut [1.0, 2.0, 3.0], &[0.1, 0.1, 0.1], true);
        let Err(crate::Error::Checkpoint { problems, .. }) = other.end_step() else { panic!("expected a mismatch") };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("slot 0: 2 moments for a parameter of 3 values"), "{problems:?}");
        assert!(problems[1].contains("2 slots in the state, the model has 1"), "{problems:?}");
        // non-finite moments are refused by name
        let mut nan = state;
        let v = nan.take_any("adamw.v.1").unwrap();
        nan.insert("adamw.v.1", v.shape, vec![f32::NAN]).unwrap();
        let err = AdamW::new(0.01, 0.0).load_state(nan, "opt").unwrap_err();
        assert!(matches!(&err, crate::Error::NonFinite { what, .. } if what.contains("adamw.v.1")), "{err}");
    }
}
