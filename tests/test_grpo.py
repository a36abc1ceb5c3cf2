"""Flow-GRPO's pieces against independent transcriptions: the SDE step's log-density (a hand-written Gaussian
and flow_grpo's ``sde_step_with_logprob`` formula), the clipped surrogate, group advantages, exact on-policy
ratios, and a toy policy that GRPO moves toward higher reward on held-out noise."""

from __future__ import annotations

import math

import pytest
import torch

from videoalign_ray.flow.objectives.base import LossContext
from videoalign_ray.flow.objectives.grpo import clipped_policy_loss, group_advantages, grpo_loss
from videoalign_ray.flow.objectives.registry import get_objective, objective_names
from videoalign_ray.flow.schedule import euler_sample, euler_timesteps
from videoalign_ray.flow.sde import sde_noise_std, sde_sample, sde_step, sde_window

ARGS = {"noise_level": 0.7, "clip_range": 1e-4, "adv_clip_max": 5.0, "kl_beta": 0.04, "cfg_scale": 1.0}


def _flow_grpo_step(v, sigma, sigma_prev, sample, prev_sample, noise_level, sigma_max):
    """flow_grpo ``sde_step_with_logprob`` (sde_type='sde'), transcribed with its own names (scalar sigmas)."""
    sigma, sigma_prev = torch.tensor(sigma), torch.tensor(sigma_prev)
    dt = sigma_prev - sigma
    std_dev_t = torch.sqrt(sigma / (1 - (sigma_max if float(sigma) == 1 else sigma))) * noise_level
    mean = sample * (1 + std_dev_t**2 / (2 * sigma) * dt) + v * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
    lp = (-((prev_sample - mean) ** 2) / (2 * ((std_dev_t * torch.sqrt(-1 * dt)) ** 2))
          - torch.log(std_dev_t * torch.sqrt(-1 * dt)) - torch.log(torch.sqrt(2 * torch.as_tensor(math.pi))))
    return lp.mean(dim=tuple(range(1, lp.ndim))), mean


@pytest.mark.parametrize("t,t_next", [(1.0, 0.9), (0.55, 0.4), (0.2, 0.1)])
def test_sde_step_log_prob_is_the_gaussian_log_density(t, t_next):
    g = torch.Generator().manual_seed(0)
    x, v, nxt = (torch.randn(3, 4, 2, 3, 3, generator=g) for _ in range(3))
    b = x.shape[0]
    step = sde_step(x, v, torch.full((b,), t), torch.full((b,), t_next), noise_level=0.7, t_max=0.9, next_latents=nxt)
    # by hand: s_t, the mean of the Euler-Maruyama step, and torch's Normal density averaged over elements
    s = 0.7 * math.sqrt(t / (1 - (0.9 if t == 1 else t)))
    dt = t_next - t
    mean = x * (1 + s * s * dt / (2 * t)) + v * (1 + s * s * (1 - t) / (2 * t)) * dt
    expected = torch.distributions.Normal(mean, s * math.sqrt(-dt)).log_prob(nxt).flatten(1).mean(1)
    torch.testing.assert_close(step.log_prob, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step.mean, mean, rtol=1e-6, atol=1e-6)
    ref_lp, ref_mean = _flow_grpo_step(v, t, t_next, x, nxt, 0.7, 0.9)
    torch.testing.assert_close(step.log_prob, ref_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step.mean, ref_mean, rtol=1e-6, atol=1e-6)
    assert step.std.shape == (b,) and float(step.std[0]) == pytest.approx(s, rel=1e-6)


def test_sde_step_samples_have_the_steps_mean_and_std():
    x, v = torch.zeros(20000, 1), torch.ones(20000, 1)
    t, tn = torch.full((20000,), 0.6), torch.full((20000,), 0.5)
    step = sde_step(x, v, t, tn, noise_level=0.7, t_max=0.9, generator=torch.Generator().manual_seed(1))
    s = float(sde_noise_std(t[:1], 0.7, 0.9))
    assert float((step.next - step.mean).mean()) == pytest.approx(0.0, abs=0.02 * s)
    assert float((step.next - step.mean).std()) == pytest.approx(s * math.sqrt(0.1), rel=0.02)
    with pytest.raises(ValueError, match="t_next < t"):
        sde_step(x[:2], v[:2], t[:2], t[:2], noise_level=0.7, t_max=0.9)


def _toy_velocity(x, t):
    return 0.5 * x - 0.2 + 0.1 * t.reshape(-1, 1, 1)


def test_sde_sample_without_sde_steps_is_euler_and_replays_its_log_probs():
    noise = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(2))
    ts = euler_timesteps(6, shift=3.0)
    ode = sde_sample(_toy_velocity, noise, ts, sde_steps=(), noise_level=0.7, generator=torch.Generator())
    torch.testing.assert_close(ode.final, euler_sample(_toy_velocity, noise, ts))
    a = sde_sample(_toy_velocity, noise, ts, sde_steps=(1, 2), noise_level=0.7, generator=torch.Generator().manual_seed(5))
    b = sde_sample(_toy_velocity, noise, ts, sde_steps=(1, 2), noise_level=0.7, generator=torch.Generator().manual_seed(5))
    assert a.steps == (1, 2) and torch.equal(a.final, b.final) and not torch.equal(a.final, ode.final)
    for j in range(2):  # the stored log-probability is the step's density of the stored next latents
        x, nxt = a.latents[j], a.next_latents[j]
        t, tn = torch.full((2,), a.t[j]), torch.full((2,), a.t_next[j])
        again = sde_step(x, _toy_velocity(x, t), t, tn, noise_level=0.7, t_max=float(ts[1]), next_latents=nxt)
        assert torch.equal(again.log_prob, a.log_probs[j])
    with pytest.raises(ValueError, match="SDE steps must lie"):
        sde_sample(_toy_velocity, noise, ts, sde_steps=(5,), noise_level=0.7, generator=torch.Generator())


def test_sde_window():
    assert sde_window(10, 2, 3) == (3, 4)
    assert sde_window(4, 9, None) == (0, 1, 2)  # the whole trajectory but its last step
    drawn = {sde_window(10, 2, None, torch.Generator().manual_seed(s)) for s in range(30)}
    assert len(drawn) > 3 and all(w[0] + 1 == w[1] and 0 <= w[0] <= 7 for w in drawn)
    with pytest.raises(ValueError, match="does not fit"):
        sde_window(10, 3, 7)


def test_group_advantages():
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.5, 0.5, 0.5, 0.5], [-1.0, 1.0, -1.0, 1.0]])
    a = group_advantages(r)
    torch.testing.assert_close(a[[0, 2]].mean(1), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(a[[0, 2]].std(1, unbiased=False), torch.ones(2), atol=1e-6, rtol=0)
    assert torch.equal(a[1], torch.zeros(4))  # equal rewards: zeros, not NaN
    assert torch.equal(a[2], torch.tensor([-1.0, 1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="K >= 2"):
        group_advantages(torch.ones(3, 1))


def test_clipped_policy_loss_matches_the_ppo_clip_formula():
    lp = torch.tensor([0.0, 0.3, -0.3, 0.05])
    old = torch.zeros(4)
    adv = torch.tensor([1.0, 1.0, -2.0, 9.0])
    loss, m = clipped_policy_loss(lp, old, adv, clip_range=0.1, adv_clip_max=5.0)
    r = lp.exp()
    a = adv.clamp(-5, 5)
    by_hand = [max(-float(a[i] * r[i]), -float(a[i]) * min(max(float(r[i]), 0.9), 1.1)) for i in range(4)]
    assert float(loss) == pytest.approx(sum(by_hand) / 4, rel=1e-6)
    assert float(m["clipfrac"]) == pytest.approx(0.5)


class _Toy(torch.nn.Module):
    """A velocity model with the diffusers transformer's call signature: ``v = x * a + b`` (learnable)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.5))
        self.b = torch.nn.Parameter(torch.zeros(1))

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False):
        return (hidden_states * self.a + self.b + 0 * encoder_hidden_states.mean(),)


def _trajectory(model, noise, gen, steps=6, window=(1, 2, 3)):
    from videoalign_ray.flow.objectives.base import velocity

    text = torch.zeros(noise.shape[0], 1, 1)
    ts = euler_timesteps(steps)
    return sde_sample(lambda x, t: velocity(model, x, t, text), noise, ts, sde_steps=window, noise_level=0.7,
                      generator=gen), ts


def _batch(traj, ts, j, adv):
    b = traj.latents[j].shape[0]
    return {"latents": traj.latents[j], "next_latents": traj.next_latents[j], "t": torch.full((b,), traj.t[j]),
            "t_next": torch.full((b,), traj.t_next[j]), "log_prob": traj.log_probs[j], "advantage": adv,
            "t_max": float(ts[1]), "prompt_embeds": torch.zeros(b, 1, 1)}


def test_on_policy_ratio_is_exactly_one_and_the_loss_has_a_gradient():
    model = _Toy()
    traj, ts = _trajectory(model, torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(0)),
                           torch.Generator().manual_seed(1))
    ctx = LossContext(engine=model, reference=_Toy().requires_grad_(False), loop=None, args=ARGS, device="cpu",
                      dtype=torch.float32)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    for j in range(len(traj.steps)):
        loss, m = grpo_loss(ctx, _batch(traj, ts, j, adv), torch.Generator())
        assert float(m["ratio_mean"]) == 1.0 and float(m["clipfrac"]) == 0.0 and float(m["approx_kl"]) == 0.0
        assert float(m["kl"]) == 0.0  # the reference is the same function before any update
        model.zero_grad()
        loss.backward()
        assert model.b.grad is not None and float(model.b.grad.abs()) > 0


def test_grpo_moves_a_toy_policy_toward_higher_reward_on_held_out_noise():
    """Reward = mean of the clean sample; K = 8 samples per prompt, 4 prompts, 25 updates. Held-out noise
    seeds measure the policy's ODE samples before and after."""
    torch.manual_seed(0)
    model = _Toy()
    ref = _Toy().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    args = dict(ARGS, clip_range=0.2, kl_beta=0.0)
    held = torch.randn(64, 2, 3, generator=torch.Generator().manual_seed(999))

    def held_out_reward():
        with torch.no_grad():
            traj, _ = _trajectory(model, held, torch.Generator(), window=())
        return float(traj.final.mean())

    before = held_out_reward()
    gen = torch.Generator().manual_seed(3)
    for _ in range(25):
        noise = torch.randn(32, 2, 3, generator=gen)
        traj, ts = _trajectory(model, noise, gen)
        adv = group_advantages(traj.final.flatten(1).mean(1).reshape(4, 8)).reshape(-1)
        ctx = LossContext(engine=model, reference=ref, loop=None, args=args, device="cpu", dtype=torch.float32)
        opt.zero_grad()
        for j in range(len(traj.steps)):
            loss, _ = grpo_loss(ctx, _batch(traj, ts, j, adv), gen)
            (loss / len(traj.steps)).backward()
        opt.step()
    after = held_out_reward()
    print(f"held-out reward {before:.3f} -> {after:.3f}")
    assert after > before + 0.5, (before, after)


def test_registry_knows_grpo_as_an_online_objective():
    assert "grpo" in objective_names("online") and "grpo" not in objective_names("offline")
    assert set(objective_names("offline")) == {"dpo", "rwr", "sft", "pretrain"}
    assert get_objective("grpo").metric_keys[0] == "loss"
    with pytest.raises(ValueError, match="registered: dpo"):
        get_objective("ppo")
