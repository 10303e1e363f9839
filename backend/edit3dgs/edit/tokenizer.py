"""CLIP tokenizer files written in code: byte-level BPE with whole-word merges for a vocabulary.

The real CLIP vocabulary (49,408 merges) cannot be downloaded here, and a model trained
from scratch does not need it: ``write_clip_tokenizer_files`` writes a ``vocab.json`` /
``merges.txt`` pair that ``transformers.CLIPTokenizer`` reads as it reads OpenAI's. Every
byte is a token (so any text tokenizes), and each word of ``words`` gets the merges that
join its characters into one token, so the instructions the built-in editor was trained on
read as a few word tokens instead of many characters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def byte_chars() -> list[str]:
    """The printable stand-ins byte-level BPE uses for the 256 byte values (GPT-2/CLIP scheme)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def word_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Merges that build each (lower-case ASCII) word left to right into one ``word</w>`` token."""
    merges: list[tuple[str, str]] = []
    seen: set = set()
    for w in sorted({w.lower() for w in words if w and w.isascii() and w.isalpha()}):
        left = w[0]
        for i, ch in enumerate(w[1:], 1):
            right = ch + ("</w>" if i == len(w) - 1 else "")
            pair = (left, right)
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            left = left + right
    return merges


def write_clip_tokenizer_files(folder: Path, words: Iterable[str] = ()) -> tuple[Path, Path]:
    """``vocab.json`` + ``merges.txt`` of a byte-level CLIP BPE (every byte, with and without
    ``</w>``) plus whole-word tokens for ``words``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = byte_chars()
    vocab: dict[str, int] = {}
    for tok in [BOS, EOS] + chars + [c + "</w>" for c in chars]:
        vocab.setdefault(tok, len(vocab))
    merges = word_merges(words)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return folder / "vocab.json", folder / "merges.txt"


def clip_tokenizer(folder: Path, words: Iterable[str] = (), max_length: int = 77):
    """A ``transformers.CLIPTokenizer`` over the files written into ``folder``."""
    from transformers import CLIPTokenizer

    vocab, merges = write_clip_tokenizer_files(folder, words)
    return CLIPTokenizer(str(vocab), str(merges), model_max_length=max_length)
