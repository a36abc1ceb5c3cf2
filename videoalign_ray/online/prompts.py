"""The prompt set of an online run: a text file (one per line), a table column, or the world's train prompts.

Bad prompts (empty, duplicate, over the text encoder's token length, outside the synthetic world when the
reward is its ground truth) are rejected with their line and reason, never dropped silently.
"""

from __future__ import annotations

from pathlib import Path

from videoalign_ray.data.schema import Reject
from videoalign_ray.errors import DataError


def read_prompt_lines(path: str | Path, column: str = "prompt") -> list[str]:
    """Raw prompts in file order: a ``.csv``/``.parquet``/``.jsonl`` table's ``column``, else one per line.

    Raises:
        DataError: missing file, or a table without ``column``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompts file not found: {path}")
    if path.suffix.lower() in (".csv", ".parquet", ".pq", ".jsonl"):
        from videoalign_ray.data.io import read_table

        df = read_table(path)
        if column not in df.columns:
            raise DataError(f"{path}: no column {column!r} (columns: {sorted(df.columns)})")
        return ["" if v is None else str(v) for v in df[column]]
    return path.read_text(encoding="utf-8").splitlines()


def validate_prompts(raw: list[str], count_tokens, max_tokens: int,
                     known: set[str] | None = None) -> tuple[list[str], list[Reject]]:
    """Keep the usable prompts (stripped, first occurrence) and reject the rest with row and reason.

    ``count_tokens(prompt) -> int``: the text encoder's token count; ``known``: when given, prompts outside
    it are rejected (no ground truth for them). Rows are 1-based lines/rows of the source.
    """
    kept, rejects, seen = [], [], {}
    for row, text in enumerate(raw, start=1):
        prompt = text.strip()
        if not prompt:
            rejects.append(Reject(row, "prompt", repr(text), "empty prompt"))
        elif prompt in seen:
            rejects.append(Reject(row, "prompt", prompt, f"duplicate of row {seen[prompt]}"))
        elif (n := count_tokens(prompt)) > max_tokens:
            rejects.append(Reject(row, "prompt", prompt[:200], f"{n} tokens, over the text encoder's {max_tokens}"))
        elif known is not None and prompt not in known:
            rejects.append(Reject(row, "prompt", prompt[:200], "not a synthetic-world prompt: no ground-truth reward"))
        else:
            seen[prompt] = row
            kept.append(prompt)
    return kept, rejects


def load_online_prompts(path: str | Path | None, column: str, *, count_tokens, max_tokens: int, world: str,
                        seed: int, ground_truth: bool) -> tuple[list[str], list[Reject], dict]:
    """An online job's prompts: ``path`` (:func:`read_prompt_lines`) or, without one, the train prompts of the
    synthetic ``world`` (split ``seed``), validated by :func:`validate_prompts`; with ``ground_truth`` every
    prompt must be one of the world's.

    Returns ``(prompts, rejects, scenes)``: ``scenes`` maps each kept world prompt to its
    :class:`~videoalign_ray.synthetic.world.Scene` (what the ground-truth scorers need).

    Raises:
        DataError: an unreadable file, or no usable prompt at all.
    """
    from videoalign_ray.synthetic.world import scene_index, split_scenes

    raw = read_prompt_lines(path, column) if path else [s.prompt for s in split_scenes(seed=seed, world=world)[0]]
    index = scene_index(world)
    prompts, rejects = validate_prompts(raw, count_tokens, max_tokens, set(index) if ground_truth else None)
    if not prompts:
        raise DataError(f"no usable prompt ({len(rejects)} rejected: see rejects.csv)")
    return prompts, rejects, {p: index[p] for p in prompts if p in index}
