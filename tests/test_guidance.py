"""Flow-NRG: the guided velocity against its formula, its direction on a 1-D Gaussian, and the latent reward
model (shapes, t-conditioning, save/load, gradient)."""

import math

import pytest
import torch
from torch import nn

from videoalign_ray.flow.guidance import guidance_factor, nrg_velocity
from videoalign_ray.flow.sampling import sample_latents
from videoalign_ray.reward.latent import reward_gradient


class LinearReward(nn.Module):
    """r(x)[:, d] = <A_d, x>: its gradient w.r.t. x is A_d whatever x, t and the prompt are."""

    def __init__(self, numel: int):
        super().__init__()
        self.A = nn.Parameter(torch.randn(numel, 3, generator=torch.Generator().manual_seed(0)))

    def forward(self, x, t, prompt_embeds):
        return x.flatten(1) @ self.A


def test_guidance_factor_and_cap():
    t = torch.tensor([0.0, 0.5, 0.8, 0.95, 1.0])
    assert guidance_factor(t, max_factor=10.0).tolist() == pytest.approx([0.0, 1.0, 4.0, 10.0, 0.0])
    assert guidance_factor(t, max_factor=100.0)[3].item() == pytest.approx(19.0)
    with pytest.raises(ValueError):
        guidance_factor(t, max_factor=0.0)


def test_nrg_update_equals_formula_on_linear_reward():
    shape = (2, 3, 2, 4, 4)
    model = LinearReward(math.prod(shape[1:]))
    x = torch.randn(shape)
    t = torch.tensor([0.3, 0.6])
    lam = torch.tensor([0.2, 0.0, 0.8])
    grad = reward_gradient(model, x, t, torch.zeros(2, 4, 8), lam)
    expected_grad = (model.A.detach() @ lam).reshape(shape[1:]).expand(shape)
    assert torch.allclose(grad, expected_grad, atol=1e-5)
    v = torch.randn(shape)
    w = 3.0
    guided = nrg_velocity(v, grad, t, w)
    for b in range(2):
        factor = t[b] / (1 - t[b])
        assert torch.allclose(guided[b], v[b] - w * factor * expected_grad[b], atol=1e-5)
    # no guidance at t = 1
    assert torch.equal(nrg_velocity(v, grad, torch.ones(2), w), v)


class GaussianVelocity(nn.Module):
    """The exact flow velocity E[eps - x0 | x_t] for 1-D data x0 ~ N(0, 1): (2t - 1) / ((1-t)^2 + t^2) * x."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False):
        t = (timestep / 1000).reshape(-1, 1, 1, 1, 1)
        return ((2 * t - 1) / ((1 - t) ** 2 + t**2) * hidden_states,)


def test_guided_sampling_moves_a_gaussian_toward_higher_reward():
    noise = torch.randn(4000, 1, 1, 1, 1, generator=torch.Generator().manual_seed(1))
    text = torch.zeros(4000, 1, 4)
    model = GaussianVelocity()
    plain = sample_latents(model, text, noise, num_steps=50)
    assert abs(plain.mean().item()) < 0.06 and abs(plain.std().item() - 1.0) < 0.06  # the sampler is right

    class RewardX(nn.Module):  # r = x on every dimension; the user weights pick VQ only
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(()))

        def forward(self, x, t, c):
            return x.flatten(1).sum(1, keepdim=True).expand(-1, 3) + 0 * self.p

    def guide(x, t, c, weights):
        return reward_gradient(RewardX(), x, t, c, weights)

    means = []
    for scale in (0.0, 0.05, 0.1):
        x = sample_latents(model, text, noise, num_steps=50, reward_guide=guide, reward_weights=(1.0, 0.0, 0.0),
                           reward_scale=scale)
        means.append(x.mean().item())
    assert means[0] == pytest.approx(plain.mean().item(), abs=1e-6)
    assert means[0] + 0.1 < means[1] < means[2] - 0.1  # monotone in the guidance scale
    # all user weights 0: no guidance at all
    x0 = sample_latents(model, text, noise, num_steps=50, reward_guide=guide, reward_weights=(0.0, 0.0, 0.0),
                        reward_scale=0.1)
    assert torch.allclose(x0, plain, atol=1e-6)


def test_latent_reward_model_shapes_t_conditioning_and_roundtrip(tiny_model_dir, tmp_path):
    from videoalign_ray.reward.latent import from_generator, load_latent_reward, save_latent_reward

    model = from_generator(tiny_model_dir, 2).eval()
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(2, 3, 4, 16, 16, generator=g), torch.randn(2, 6, 384, generator=g)
    with torch.no_grad():
        nn.init.normal_(model.head.weight, std=1.0, generator=g)
        r1 = model(x, torch.tensor([0.2, 0.2]), c)
        r2 = model(x, torch.tensor([0.9, 0.9]), c)
    assert r1.shape == (2, 3) and r1.dtype == torch.float32
    assert (r1 - r2).abs().max() > 1e-4  # conditioned on t
    assert len(model.blocks) == 2
    save_latent_reward(model, tmp_path / "ck")
    loaded = load_latent_reward(tmp_path / "ck")
    with torch.no_grad():
        assert torch.allclose(loaded(x, torch.tensor([0.2, 0.2]), c), r1, atol=1e-6)
    grad = reward_gradient(loaded, x, torch.tensor([0.5, 0.5]), c, torch.tensor([1.0, 0.0, 0.0]))
    assert grad.shape == x.shape and grad.abs().sum() > 0
    with pytest.raises(ValueError):
        from_generator(tiny_model_dir, 99)
    with pytest.raises(FileNotFoundError):
        load_latent_reward(tmp_path)


def test_ensemble_of_latent_rewards_is_the_mean_of_its_members(tiny_model_dir, tmp_path):
    """Several checkpoints joined by commas: reward and guidance gradient are the members' means (computed
    here from each member alone); one folder loads the plain model."""
    from videoalign_ray.reward.latent import (
        LatentRewardEnsemble,
        LatentRewardModel,
        from_generator,
        load_latent_reward,
        load_latent_reward_spec,
        save_latent_reward,
    )

    g = torch.Generator().manual_seed(1)
    for k, name in ((1, "a"), (2, "b")):  # members of different depth, heads far apart
        member = from_generator(tiny_model_dir, k)
        with torch.no_grad():
            nn.init.normal_(member.head.weight, std=1.0, generator=g)
        save_latent_reward(member, tmp_path / name)
    a, b = load_latent_reward(tmp_path / "a"), load_latent_reward(tmp_path / "b")
    ens = load_latent_reward_spec(f"{tmp_path / 'a'}, {tmp_path / 'b'}")
    assert isinstance(ens, LatentRewardEnsemble) and len(ens.members) == 2
    assert isinstance(load_latent_reward_spec(str(tmp_path / "a")), LatentRewardModel)
    x, c = torch.randn(2, 3, 4, 16, 16, generator=g), torch.randn(2, 6, 384, generator=g)
    t, w = torch.tensor([0.3, 0.7]), torch.tensor([0.2, 0.5, 1.0])
    with torch.no_grad():
        ra, rb = a(x, t, c), b(x, t, c)
        assert (ra - rb).abs().max() > 1e-2  # the members disagree, so the mean is not either of them
        assert torch.allclose(ens(x, t, c), (ra + rb) / 2, atol=1e-6)
    ga, gb = reward_gradient(a, x, t, c, w), reward_gradient(b, x, t, c, w)
    assert torch.allclose(reward_gradient(ens, x, t, c, w), (ga + gb) / 2, atol=1e-6)
    with pytest.raises(ValueError):
        load_latent_reward_spec(" , ")
    with pytest.raises(FileNotFoundError):
        load_latent_reward_spec(f"{tmp_path / 'a'},{tmp_path}")
