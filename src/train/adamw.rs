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
}

impl AdamW {
    /// PyTorch's defaults for betas and eps.
    pub fn new(lr: f32, weight_decay: f32) -> Self {
        AdamW { lr, betas: (0.9, 0.999), eps: 1e-8, weight_decay, step: 0, moments: Vec::new() }
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
        let (step, slots) = (meta("adamw.step")?, meta("adamw.slots")? as usize);
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
        assert_eq!(again, opt);
    }
}
