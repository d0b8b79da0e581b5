"""Pretrained Hugging Face transformer encoders (BERT-like text, ViT images) as frozen backbones.

The encoder returns the CLS feature of the last layer and can insert prompt tokens right after the
CLS token (prompt tuning, as L2P and S-Prompts do). Prompts are inserted by a forward hook on the
model's embeddings module, so the rest of the forward pass (attention masks, the attention
implementation, the final norm) stays the model's own and PEFT adapters injected into
``encoder.model`` are used as they are.

Weights are read from safetensors files only. A name that is not a local folder is fetched from
the Hugging Face hub (or its local cache) with ``huggingface_hub``. Needs the ``nlp`` extra
(``pip install 'ricordo[nlp]'``); ``transformers`` is imported only when an encoder is loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ricordo.errors import ConfigError, DataError

TEXT = "text"
VISION = "vision"
# What TransformerEncoder.forward returns per row: the CLS output, or the prompt tokens' mean.
POOLINGS = ("cls", "prompts")

# What a backbone folder needs; fetched from the hub when the name is not a local folder. Only
# safetensors weights: a pickled pytorch_model.bin is never downloaded nor loaded.
_HUB_FILES = [
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
]


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ConfigError(
            "pretrained transformer backbones need the transformers package: "
            "pip install 'ricordo[nlp]'"
        ) from err
    return transformers


def backbone_folder(name_or_path: str) -> Path:
    """The local folder of a backbone: ``name_or_path`` itself, or its hub snapshot.

    A hub name is downloaded once into the Hugging Face cache (``HF_HOME``); offline, the cached
    snapshot is used. Anything else is a one-line :class:`ConfigError`.
    """
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        return path.resolve()
    looks_like_path = (
        str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1
    )
    if looks_like_path or path.exists():
        raise ConfigError(
            f"backbone {name_or_path!r} is not a folder; pass a folder written by "
            "save_pretrained (config.json + model.safetensors) or a Hugging Face hub name"
        )
    try:
        folder = _hub_snapshot(str(name_or_path))
    except Exception as err:  # hub errors: offline, unknown repo, invalid id, gated repo
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"backbone {name_or_path!r} is not a local folder and could not be fetched from the "
            f"Hugging Face hub ({reason}); pass a local folder written by save_pretrained, or "
            "download it once while online (it is then read from the hub cache)"
        ) from err
    return Path(folder)


@lru_cache(maxsize=16)
def _hub_snapshot(name: str) -> str:
    # Once per process and name: tokenizing each chunk must not ask the hub again.
    from huggingface_hub import snapshot_download

    return str(snapshot_download(name, allow_patterns=_HUB_FILES))


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConfigError(
            f"backbone folder {str(folder)!r} has no *.safetensors weights; Ricordo never loads "
            "pickled weights: re-save the model with save_pretrained(folder) (safetensors is "
            "the default)"
        )
    return files


def backbone_fingerprint(name_or_path: str) -> str:
    """sha256 over the backbone's config.json and safetensors weight files (names and bytes).

    A state records it and loading refuses a backbone whose fingerprint differs: the saved head
    only makes sense on top of the same frozen weights.
    """
    folder = backbone_folder(name_or_path)
    files = [folder / "config.json", *_weight_files(folder)]
    return _fingerprint(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@lru_cache(maxsize=16)
def _fingerprint(files: tuple[tuple[str, int, int], ...]) -> str:
    # Keyed by (path, size, mtime) so a second call for the same files does not re-read them.
    digest = hashlib.sha256()
    for name, _size, _mtime in files:
        digest.update(Path(name).name.encode() + b"\0")
        with open(name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars (our logs are one line per event)."""
    logging = _require_transformers().utils.logging
    verbosity = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


@lru_cache(maxsize=8)
def _tokenizer(folder: str) -> Any:
    transformers = _require_transformers()
    try:
        with _quiet_transformers():
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as err:  # no tokenizer files: an image encoder
        raise ConfigError(
            f"the backbone in {folder!r} has no tokenizer ({type(err).__name__}); text needs a "
            "BERT-like text encoder saved with its tokenizer (tokenizer.save_pretrained(folder))"
        ) from None
    if tokenizer.pad_token_id is None:
        raise ConfigError(
            f"the tokenizer in {folder!r} has no padding token; text backbones must be "
            "BERT-like encoders whose tokenizer pads (e.g. bert-base-uncased, MiniLM)"
        )
    return tokenizer


def tokenize(texts: Sequence[str], name_or_path: str, max_length: int = 128) -> Tensor:
    """Token ids (N, max_length) int64 of ``texts`` with the backbone's tokenizer.

    Every text is truncated or padded to exactly ``max_length`` (not to the longest in the
    list) so chunks tokenized at different times can share a rehearsal memory.
    """
    if max_length < 2:
        raise ConfigError(f"max_length={max_length} must be at least 2 (CLS and one token)")
    if isinstance(texts, str):
        raise DataError("tokenize expects a list of strings, not one string")
    tokenizer = _tokenizer(str(backbone_folder(name_or_path)))
    encoded = tokenizer(
        [str(t) for t in texts],
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    return encoded["input_ids"].to(torch.int64)


class TransformerEncoder(nn.Module):
    """A pretrained Hugging Face encoder (BERT-like text or ViT image), frozen by default.

    A frozen encoder (``trainable=False``) has ``requires_grad=False`` everywhere and stays in
    eval mode (no dropout) even when a parent module is put in train mode. Parameters added
    later (e.g. LoRA adapters injected by peft) keep their own ``requires_grad``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        name_or_path: str,
        kind: str,
        trainable: bool = False,
        pad_token_id: int | None = None,
        image_size: tuple[int, int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if kind not in (TEXT, VISION):
            raise ConfigError(f"encoder kind {kind!r} is not 'text' or 'vision'")
        self.name_or_path = str(name_or_path)
        self.kind = kind
        self.model = model
        self.hidden_size = int(model.config.hidden_size)
        self.trainable = bool(trainable)
        self.pad_token_id = pad_token_id
        self.image_size = image_size
        self.num_channels = int(getattr(model.config, "num_channels", 3))
        if kind == VISION:
            if image_size is None or mean is None or std is None:
                raise ConfigError("a vision encoder needs image_size, mean and std")
            shape = (1, len(mean), 1, 1)
            # Not persistent: they come from the backbone's folder, never from a saved state.
            self.register_buffer("mean", torch.tensor(list(mean)).reshape(shape), False)
            self.register_buffer("std", torch.tensor(list(std)).reshape(shape), False)
        elif pad_token_id is None:
            raise ConfigError("a text encoder needs its tokenizer's pad_token_id")
        for parameter in self.model.parameters():
            parameter.requires_grad_(self.trainable)
        self.train(self.trainable)

    def train(self, mode: bool = True) -> TransformerEncoder:
        super().train(mode)
        if not self.trainable:
            self.model.eval()  # frozen: dropout stays off whatever the parent does
        return self

    def extra_repr(self) -> str:
        return f"name_or_path={self.name_or_path!r}, kind={self.kind}, trainable={self.trainable}"

    def forward(self, x: Tensor, prompts: Tensor | None = None, *, pool: str = "cls") -> Tensor:
        """The CLS feature (N, D) of the last layer, after the final norm.

        x: token ids (N, L) int64 padded with the tokenizer's pad id (text), or images
        (N, C, H, W) float in [0, 1] at any size (vision: resized to the model's image size and
        normalised with its processor's mean/std). prompts: optional (N, P, D) tokens inserted
        right after the CLS token, before the transformer layers; the attention mask is
        extended so every prompt is attended. pool: ``"cls"`` (the CLS token's output) or
        ``"prompts"`` (the mean of the P prompt tokens' outputs: L2P's prompt classifier input).
        """
        if pool not in POOLINGS:
            raise ConfigError(f"pool={pool!r} must be one of {', '.join(POOLINGS)}")
        if pool == "prompts" and prompts is None:
            raise ConfigError('pool="prompts" averages the prompt tokens: pass prompts')
        inputs = self._text_inputs(x, prompts) if self.kind == TEXT else self._vision_inputs(x)
        if prompts is not None:
            self._check_prompts(prompts, x.shape[0])
        needs_grad = torch.is_grad_enabled() and (
            (prompts is not None and prompts.requires_grad)
            or any(p.requires_grad for p in self.model.parameters())
        )
        # Nothing to train through (a frozen encoder, no prompts): skip building the graph.
        with contextlib.nullcontext() if needs_grad else torch.no_grad():
            if prompts is None:
                out = self.model(**inputs)
            else:
                handle = self._embeddings().register_forward_hook(_insert_after_cls(prompts))
                try:
                    out = self.model(**inputs)
                finally:
                    handle.remove()
        if pool == "prompts":
            assert prompts is not None
            return out.last_hidden_state[:, 1 : 1 + prompts.shape[1]].mean(dim=1)
        return out.last_hidden_state[:, 0]

    def _text_inputs(self, x: Tensor, prompts: Tensor | None) -> dict[str, Tensor]:
        exact = x.dtype in (torch.float32, torch.float64) and bool(
            ((x == x.round()) & (x.abs() < 2**24)).all()
        )  # ids read from a numeric array arrive as float32: whole numbers < 2**24 are exact
        if x.dim() != 2 or x.dtype == torch.bool or (x.is_floating_point() and not exact):
            raise DataError(
                f"a text backbone takes token ids (N, L) of an integer dtype, got "
                f"{tuple(x.shape)} {x.dtype}; tokenize the texts with the backbone's tokenizer"
            )
        ids = x.long()
        keep = ids != self.pad_token_id
        if prompts is not None:
            extra = torch.ones(ids.shape[0], prompts.shape[1], dtype=keep.dtype, device=keep.device)
            keep = torch.cat([keep[:, :1], extra, keep[:, 1:]], dim=1)
        # The additive (N, 1, 1, L) mask, built here: HF uses a 4-D mask as given (eager and
        # sdpa alike), whereas from a 2-D one it first tests whether any token is padding, a
        # data-dependent branch that per-example gradients (torch.func.vmap: EWC's Fisher)
        # cannot trace.
        dtype = self.model.dtype
        mask = (~keep)[:, None, None, :].to(dtype) * torch.finfo(dtype).min
        return {"input_ids": ids, "attention_mask": mask}

    def _vision_inputs(self, x: Tensor) -> dict[str, Tensor]:
        if x.dim() != 4 or not x.dtype.is_floating_point:
            raise DataError(
                f"a vision backbone takes float images (N, C, H, W) in [0, 1], got "
                f"{tuple(x.shape)} {x.dtype}"
            )
        if x.shape[1] == 1 and self.num_channels == 3:
            x = x.expand(-1, 3, -1, -1)  # grey images: the same value on every channel
        if x.shape[1] != self.num_channels:
            raise DataError(
                f"the backbone {self.name_or_path!r} takes {self.num_channels}-channel images, "
                f"got {x.shape[1]} channels"
            )
        if tuple(x.shape[-2:]) != self.image_size:
            # Bilinear with antialiasing, like the image processors' PIL bilinear resize.
            x = F.interpolate(
                x, size=self.image_size, mode="bilinear", align_corners=False, antialias=True
            )
        pixels = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return {"pixel_values": pixels}

    def _check_prompts(self, prompts: Tensor, n: int) -> None:
        if prompts.dim() != 3 or prompts.shape[0] != n or prompts.shape[2] != self.hidden_size:
            raise ConfigError(
                f"prompts must be (N={n}, P, D={self.hidden_size}), got {tuple(prompts.shape)}"
            )

    def _embeddings(self) -> nn.Module:
        embeddings = getattr(self.model, "embeddings", None)
        if not isinstance(embeddings, nn.Module):
            raise ConfigError(
                f"the backbone {self.name_or_path!r} ({type(self.model).__name__}) has no "
                "'embeddings' module to insert prompts after; prompts need a BERT- or ViT-like "
                "encoder"
            )
        return embeddings


def _insert_after_cls(prompts: Tensor) -> Any:
    def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
        tokens = prompts.to(dtype=output.dtype, device=output.device)
        return torch.cat([output[:, :1], tokens, output[:, 1:]], dim=1)

    return hook


def load_encoder(name_or_path: str, *, trainable: bool = False) -> TransformerEncoder:
    """Load a pretrained encoder from a local folder or the Hugging Face hub.

    Text encoders must be BERT-like (their tokenizer pads; CLS first); vision encoders ViT-like
    with an image processor config (``preprocessor_config.json``: image_mean, image_std). The
    pooling layer, unused here, is dropped where the architecture allows it.
    """
    transformers = _require_transformers()
    folder = backbone_folder(name_or_path)
    _weight_files(folder)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"backbone folder {str(folder)!r} has no config.json")
    # from_pretrained initialises weights missing from the checkpoint with the global RNG: keep
    # the caller's random stream untouched so a run's seed means the same with or without it.
    with torch.random.fork_rng(devices=[]), _quiet_transformers():
        model = _from_pretrained(transformers, folder)
    main_input = getattr(model, "main_input_name", "input_ids")
    if main_input == "input_ids":
        tokenizer = _tokenizer(str(folder))
        return TransformerEncoder(
            model,
            name_or_path=name_or_path,
            kind=TEXT,
            trainable=trainable,
            pad_token_id=int(tokenizer.pad_token_id),
        )
    if main_input == "pixel_values":
        size, mean, std = _image_processing(folder, model.config)
        return TransformerEncoder(
            model,
            name_or_path=name_or_path,
            kind=VISION,
            trainable=trainable,
            image_size=size,
            mean=mean,
            std=std,
        )
    raise ConfigError(
        f"backbone {name_or_path!r} ({type(model).__name__}) takes {main_input!r}; Ricordo "
        "supports text encoders (input_ids) and image encoders (pixel_values)"
    )


def _from_pretrained(transformers: Any, folder: Path) -> nn.Module:
    """The HF model in ``folder``, without its pooler where the architecture allows it.

    Attention is PyTorch's SDPA where the architecture has it, else the eager implementation:
    both take the additive 4-D mask the text path builds (a config asking for flash attention,
    which takes no such mask, is overridden).
    """
    for attention in ("sdpa", "eager"):
        for extra in ({"add_pooling_layer": False}, {}):
            try:
                return transformers.AutoModel.from_pretrained(
                    str(folder), use_safetensors=True, attn_implementation=attention, **extra
                )
            except TypeError:  # architectures without a pooler take no add_pooling_layer
                continue
            except ValueError as err:  # no SDPA for this architecture: try eager
                if attention == "eager" or "attention" not in str(err).lower():
                    raise
                break
    raise ConfigError(f"cannot load the transformer in {str(folder)!r}")  # pragma: no cover


def _image_processing(
    folder: Path, config: Any
) -> tuple[tuple[int, int], list[float], list[float]]:
    """(image size, mean, std) from the folder's preprocessor_config.json."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        raise ConfigError(
            f"backbone folder {str(folder)!r} has no preprocessor_config.json, so the image "
            "normalisation is unknown; save the model's image processor there "
            "(processor.save_pretrained(folder)) with image_mean and image_std"
        )
    processor = json.loads(path.read_text())
    if processor.get("do_normalize", True):
        mean, std = processor.get("image_mean"), processor.get("image_std")
        if not mean or not std:
            raise ConfigError(f"{str(path)!r} has no image_mean/image_std")
    else:
        mean, std = [0.0], [1.0]
    size = int(config.image_size) if isinstance(config.image_size, int) else None
    image_size = (size, size) if size is not None else tuple(int(s) for s in config.image_size)
    return image_size, [float(m) for m in mean], [float(s) for s in std]
