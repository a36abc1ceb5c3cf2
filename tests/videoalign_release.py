"""A tiny Qwen2-VL written in VideoAlign's released layouts, and an independent transcription of VideoAlign's
inference to score it with (tests/test_videoalign_parity.py, tests/test_videoalign_jobs.py,
benchmarks/videoalign_parity.py).

The reference below is an independent transcription of VideoAlign's inference steps (KwaiVGI/VideoAlign at
219ab9d, MIT License), written from its files, nothing imported from it:
- frames: ``vision_process.py`` ``_read_video_decord`` (decord, ``smart_nframes``, L129-170 and L244-254:
  ``torch.linspace(0, total - 1, n).round()``) and ``fetch_video`` (L293-325: ``smart_resize``, torchvision's
  antialiased bicubic on the uint8 tensor, i.e. float32 interpolation clamped and rounded, then ``.float()``);
- pixels: transformers 4.45 ``Qwen2VLImageProcessor._preprocess`` for videos (rescale 1/255, CLIP mean/std, the
  last frame repeated to an even count, 14x14 patches in 2x2 merge order);
- text: ``inference.py`` ``prepare_batch`` (L126-170): the ``prompt_template.py`` template inside Qwen2-VL's chat
  template (rendered here from its Jinja source) with the generation prompt, each ``<|video_pad|>`` expanded to
  ``t * h * w / 4`` tokens, right padding;
- model: ``trainer.py`` ``Qwen2VLRewardModelBT.forward`` (L71-173): video embeddings scattered into the token
  embeddings, the language model called with ``position_ids=None`` (transformers 4.45 then uses ``0..L-1`` on all
  three rotary axes), ``rm_head`` on every position, the three reward tokens' rows, the diagonal for
  ``output_dim=3``; ``inference.py`` ``_norm`` and ``Overall = VQ + MQ + TA``;
- weights: ``utils.py`` ``load_model_from_checkpoint`` (latest ``checkpoint-N``); LoRA folded by its formula
  ``W + alpha / r * B A`` (``alpha / sqrt(r)`` with rsLoRA), independently of peft.

A tiny random Qwen2-VL is written in each released layout (PEFT-wrapped ``model.pth``; adapter +
``non_lora_state_dict.pth`` over the base; full fine-tune ``model.pth``) and scored on the real example videos.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

DIMS = ("VQ", "MQ", "TA")
REWARD_TOKENS = ["<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>"]
# Qwen2-VL-2B-Instruct's chat template (its chat_template.json), transcribed for rendering with Jinja here.
QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")


# ---- the reference: VideoAlign's inference, transcribed ------------------------------------------------------
def va_round_by_factor(n, f):
    return round(n / f) * f


def va_smart_nframes(ele: dict, total_frames: int, video_fps: float) -> int:
    if "nframes" in ele:
        nframes = va_round_by_factor(ele["nframes"], 2)
    else:
        fps = ele.get("fps", 2.0)
        min_frames = math.ceil(ele.get("min_frames", 4) / 2) * 2
        max_frames = math.floor(ele.get("max_frames", min(768, total_frames)) / 2) * 2
        nframes = total_frames / video_fps * fps
        nframes = min(max(nframes, min_frames), max_frames)
        nframes = va_round_by_factor(nframes, 2)
    if nframes > total_frames:
        nframes = total_frames
    if not (2 <= nframes <= total_frames):
        raise ValueError(nframes)
    return nframes


def va_smart_resize(height, width, factor=28, min_pixels=128 * 28 * 28, max_pixels=768 * 28 * 28):
    h_bar = max(factor, va_round_by_factor(height, factor))
    w_bar = max(factor, va_round_by_factor(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def va_fetch_video(path: str, ele: dict) -> torch.Tensor:
    import decord

    vr = decord.VideoReader(path)
    total_frames, video_fps = len(vr), vr.get_avg_fps()
    nframes = va_smart_nframes(ele, total_frames, video_fps)
    idx = torch.linspace(0, total_frames - 1, nframes).round().long().tolist()
    video = torch.tensor(vr.get_batch(idx).asnumpy()).permute(0, 3, 1, 2)  # TCHW uint8
    _, _, height, width = video.shape
    h, w = va_smart_resize(height, width, min_pixels=128 * 28 * 28, max_pixels=ele["max_pixels"])
    # torchvision resize of a uint8 tensor with BICUBIC + antialias: float32 interpolation, clamp, round
    out = torch.nn.functional.interpolate(video.float(), size=[h, w], mode="bicubic", align_corners=False,
                                          antialias=True)
    return out.clamp(0, 255).round().float()


def va_pixel_values(video: torch.Tensor, patch=14, tps=2, merge=2):
    x = video.numpy().astype(np.float32) * np.float32(1 / 255)
    x = (x - CLIP_MEAN[None, :, None, None]) / CLIP_STD[None, :, None, None]
    if x.shape[0] % tps:
        x = np.concatenate([x, np.repeat(x[-1][None], tps - 1, axis=0)])
    t, c, h, w = x.shape
    gt, gh, gw = t // tps, h // patch, w // patch
    x = x.reshape(gt, tps, c, gh // merge, merge, patch, gw // merge, merge, patch).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return torch.from_numpy(x.reshape(gt * gh * gw, c * tps * patch * patch).copy()), (gt, gh, gw)


# sha256 of VideoAlign prompt_template.py's DETAILED_PROMPT_WITH_SPECIAL_TOKEN and DETAILED_PROMPT (at 219ab9d):
# the project keeps the strings byte for byte (reward/videoalign_templates.py); these pin them to the source.
TEMPLATE_SHA256 = {"DETAILED_PROMPT_WITH_SPECIAL_TOKEN": "fdb6309bac618dd0c8b1b589d3a0970a974f7856eecbb355a190b2dce54af700",
                   "DETAILED_PROMPT": "146adc781613460cfea4101d4986197dbddba11765bb72da4626175ad1a0c353"}


def va_build_prompt(prompt: str, template: str) -> str:
    """``prompt_template.build_prompt`` for the two detailed templates (they take only the text prompt)."""
    from videoalign_ray.reward import videoalign_templates as t

    name = {"detailed_special": "DETAILED_PROMPT_WITH_SPECIAL_TOKEN", "detailed": "DETAILED_PROMPT"}[template]
    return getattr(t, name).format(text_prompt=prompt)


def va_batch(paths, prompts, tok, data_config: dict) -> dict:
    from jinja2 import Template

    ele_extra = ({"nframes": data_config["num_frames"]} if data_config.get("num_frames") is not None
                 else {"fps": data_config["fps"]})
    videos = [va_fetch_video(p, {"max_pixels": data_config["max_frame_pixels"], **ele_extra}) for p in paths]
    pixel_values, grids, texts = [], [], []
    for video, prompt in zip(videos, prompts, strict=True):
        pv, grid = va_pixel_values(video)
        pixel_values.append(pv)
        grids.append(grid)
        messages = [{"role": "user", "content": [
            {"type": "video", "video": "file://x"},
            {"type": "text", "text": va_build_prompt(prompt, data_config["prompt_template_type"])}]}]
        text = Template(QWEN2VL_CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=True)
        texts.append(text.replace("<|video_pad|>", "<|video_pad|>" * (grid[0] * grid[1] * grid[2] // 4)))
    enc = tok(texts, padding=True, return_tensors="pt")  # padding_side="right"
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "pixel_values_videos": torch.cat(pixel_values), "video_grid_thw": torch.tensor(grids)}


@torch.no_grad()
def va_reward(hf_model, rm_head: torch.Tensor, batch: dict, special_ids: list[int], norm: dict) -> np.ndarray:
    """Normalised VQ, MQ, TA, Overall ``(B, 4)`` as ``Qwen2VLRewardModelBT.forward`` + ``_norm`` compute them."""
    input_ids = batch["input_ids"]
    emb = hf_model.get_input_embeddings()(input_ids)
    video = hf_model.model.get_video_features(batch["pixel_values_videos"], batch["video_grid_thw"], return_dict=True)
    video = torch.cat(list(video.pooler_output), dim=0).to(emb.dtype)
    mask = (input_ids == hf_model.config.video_token_id).unsqueeze(-1).expand_as(emb)
    emb = emb.masked_scatter(mask, video)
    b, length = input_ids.shape
    positions = torch.arange(length).view(1, 1, -1).expand(3, b, -1)  # position_ids=None under transformers 4.45
    hidden = hf_model.model.language_model(inputs_embeds=emb, attention_mask=batch["attention_mask"],
                                           position_ids=positions).last_hidden_state
    logits = hidden @ rm_head.T  # (B, L, 3)
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for tid in special_ids:
        special |= input_ids == tid
    pooled = logits[special].view(b, 3, -1).diagonal(dim1=1, dim2=2).view(b, -1).numpy()
    out = np.stack([(pooled[:, i] - norm[f"{d}_mean"]) / norm[f"{d}_std"] for i, d in enumerate(DIMS)], axis=1)
    return np.concatenate([out, out.sum(axis=1, keepdims=True)], axis=1)


# ---- a tiny Qwen2-VL written in VideoAlign's layouts -------------------------------------------------------------
def _base_tokenizer(texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from videoalign_ray.reward.processor import QWEN_SPECIAL

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=list(QWEN_SPECIAL),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   additional_special_tokens=list(QWEN_SPECIAL[1:]), padding_side="right")


def _old_name(name: str) -> str:
    """The installed transformers' Qwen2-VL name -> transformers 4.45's (what VideoAlign saved)."""
    for new, old in (("model.language_model.", "model."), ("model.visual.", "visual.")):
        if name.startswith(new):
            return old + name[len(new):]
    return name


def build_world(root: Path, shared_data: Path) -> dict:
    """The base model and tokenizer on disk, the "trained" weights and LoRA deltas, the example videos."""
    from transformers import Qwen2VLForConditionalGeneration

    from videoalign_ray.reward.model import tiny_qwen2vl_config

    table = shared_data / "videoalign-examples" / "example.csv"
    import pandas as pd

    df = pd.read_csv(table)
    paths = [str((table.parent / p).resolve()) for col in ("path_A", "path_B") for p in df[col]]
    prompts = [p for _ in ("path_A", "path_B") for p in df["prompt"]]
    texts = [va_build_prompt(p, t) for p in prompts for t in ("detailed_special", "detailed")] * 3
    base_tok = _base_tokenizer(texts)
    torch.manual_seed(0)
    base = Qwen2VLForConditionalGeneration(tiny_qwen2vl_config(base_tok))
    base_dir = root / "Qwen2-VL-tiny"
    base.save_pretrained(base_dir)
    base_tok.save_pretrained(base_dir)
    tok = _base_tokenizer(texts)
    tok.add_tokens(REWARD_TOKENS, special_tokens=True)  # VideoAlign: add_special_tokens, then resize the embeddings
    special_ids = tok.convert_tokens_to_ids(REWARD_TOKENS)
    # The "trained" model: base, embeddings resized with trained new rows, a trained vision tower, a reward head
    g = torch.Generator().manual_seed(1)
    base.resize_token_embeddings(len(tok), mean_resizing=False)
    trained = {k: v.clone() for k, v in base.state_dict().items()}
    for k in trained:
        if k.startswith("model.visual.") or k == "model.language_model.embed_tokens.weight":
            trained[k] = trained[k] + 0.02 * torch.randn(trained[k].shape, generator=g)
    hidden = base.config.text_config.hidden_size
    rm_head = 0.05 * torch.randn(3, hidden, generator=g)
    lora = {}
    for name, _ in base.named_modules():
        if name.startswith("model.language_model.layers.") and name.endswith(TARGETS):
            w = trained[name + ".weight"]
            lora[name] = (0.05 * torch.randn(4, w.shape[1], generator=g), 0.05 * torch.randn(w.shape[0], 4, generator=g))
    return {"root": root, "base_dir": base_dir, "base": base, "tok": tok, "special_ids": special_ids, "paths": paths,
            "prompts": prompts, "trained": trained, "rm_head": rm_head, "lora": lora}


def _merged(world, scale: float) -> dict:
    state = dict(world["trained"])
    for name, (a, b) in world["lora"].items():
        state[name + ".weight"] = state[name + ".weight"] + scale * b @ a
    return state


def write_release(world, name: str, layout: str, data_config: dict, *, rslora: bool = False) -> tuple:
    """A released folder in ``layout``; returns (folder, the weights the reference runs with)."""
    folder = world["root"] / name
    r, alpha = 4, 8
    scale = alpha / math.sqrt(r) if rslora else alpha / r
    conf = {
        "data_config": {"meta_data": "x.csv", "data_dir": "x", "fps": 2.0, "num_frames": None, "max_frame_pixels":
                        128 * 28 * 28, "eval_dim": ["VQ", "MQ", "TA"], "prompt_template_type": "detailed_special",
                        "sample_type": "uniform", **data_config},
        "model_config": {"model_name_or_path": str(world["base_dir"]), "output_dim": 3, "use_special_tokens": True,
                         "reward_token": "special"},
        "peft_lora_config": {"lora_enable": layout != "full", "lora_r": r, "lora_alpha": alpha,
                             "use_rslora": rslora},
        "inference_config": {"VQ_mean": 0.3, "VQ_std": 1.7, "MQ_mean": -0.2, "MQ_std": 0.6, "TA_mean": 0.1,
                             "TA_std": 2.5},
    }
    (folder / "checkpoint-2").mkdir(parents=True)  # an older step: the latest one is read
    ckpt = folder / "checkpoint-10"
    ckpt.mkdir()
    (folder / "model_config.json").write_text(json.dumps(conf))
    world["tok"].save_pretrained(folder / "tokenizer")
    trained, lora = world["trained"], world["lora"]
    if layout == "peft":
        sd = {}
        for k, v in trained.items():
            module, _, leaf = k.rpartition(".")
            if module in lora:
                sd[f"base_model.model.{_old_name(module)}.base_layer.{leaf}"] = v
            else:
                sd[f"base_model.model.{_old_name(k)}"] = v
        for module, (a, b) in lora.items():
            sd[f"base_model.model.{_old_name(module)}.lora_A.default.weight"] = a
            sd[f"base_model.model.{_old_name(module)}.lora_B.default.weight"] = b
        sd["base_model.model.rm_head.weight"] = world["rm_head"]
        torch.save(sd, ckpt / "model.pth")
    elif layout == "adapter":
        from safetensors.torch import save_file

        save_file({f"base_model.model.{_old_name(m)}.lora_{x}.weight": t.contiguous() for m, (a, b) in lora.items()
                   for x, t in (("A", a), ("B", b))}, str(ckpt / "adapter_model.safetensors"))
        (ckpt / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": alpha,
                                                              "use_rslora": rslora}))
        non_lora = {f"base_model.model.{_old_name(k)}": v for k, v in trained.items()
                    if k.startswith("model.visual.") or k == "model.language_model.embed_tokens.weight"}
        non_lora["base_model.model.rm_head.weight"] = world["rm_head"]
        torch.save(non_lora, ckpt / "non_lora_state_dict.pth")
    else:
        sd = {_old_name(k): v for k, v in _merged(world, scale).items()}
        sd["rm_head.weight"] = world["rm_head"]
        torch.save(sd, ckpt / "model.pth")
    return folder, _merged(world, scale), conf


def reference_scores(world, weights: dict, conf: dict) -> np.ndarray:
    from transformers import Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration(world["base"].config)
    model.resize_token_embeddings(len(world["tok"]), mean_resizing=False)
    model.load_state_dict(weights)
    batch = va_batch(world["paths"], world["prompts"], world["tok"], conf["data_config"])
    return va_reward(model.eval(), world["rm_head"], batch, world["special_ids"], conf["inference_config"])


def project_scores(folder, paths, prompts, **scheme_changes) -> np.ndarray:
    """What the project's scorers compute (the Serve app's in-process scorer; Ray Data's actor does the same)."""
    from dataclasses import replace

    from videoalign_ray.serve.scorer import RewardScorer

    scorer = RewardScorer(folder)
    if scheme_changes:
        from videoalign_ray.reward.pipeline import FrameSpec

        scheme = replace(scorer.proc.scheme, **scheme_changes)
        scorer.proc.scheme, scorer.spec, scorer.model.positions = scheme, FrameSpec.of(scheme), scheme.positions
    rows = scorer.score([scorer.decode(p) for p in paths], prompts)
    return np.array([[r[d] for d in (*DIMS, "Overall")] for r in rows])


