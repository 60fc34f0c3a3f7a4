"""TRL trains on our exports: one step each of DPO, KTO and SFT, on CPU, from a real run.

The data is a real ``sim`` run (best-of-N and refine on arithmetic) exported by
``deliberate.export``; the model is a tiny randomly initialised Llama built from a
config, and the tokenizer is trained here on the export's own text, so nothing is
downloaded (offline mode is on, and the conftest guard refuses any non-loopback
connection). Each test loads the exported file the way a user would
(``datasets.load_dataset``) and checks that the trainer took one finite optimiser
step on exactly the exported rows, in the columns TRL reads.

Needs PyTorch's CPU build and the ``train`` extra:
``pip install torch==2.13.0 && pip install -e '.[train]'``. Without them the tests
skip, except under CI=true, where they fail: CI never skips them.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import in_ci

if TYPE_CHECKING:
    from deliberate.export.runner import ExportResult

pytestmark = pytest.mark.slow

TRAIN_HINT = "pip install torch==2.13.0 && pip install -e '.[train]'"
NEEDED = ("torch", "transformers", "tokenizers", "trl", "datasets", "accelerate")
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

SPECIAL = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
"""Role markers are special tokens, so a prompt rendered alone is a token prefix of the
prompt rendered with its completion (TRL cuts the completion off there)."""


# ------------------------------------------------------------------ environment


def _require_training_stack() -> None:
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if not missing:
        return
    if in_ci():
        pytest.fail(f"CI=true but {', '.join(missing)} missing: the TRL tests must run in CI "
                    f"({TRAIN_HINT})")
    pytest.skip(f"needs {', '.join(missing)}: {TRAIN_HINT}")


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    """The training stack, imported with every Hugging Face download switched off."""
    _require_training_stack()
    with pytest.MonkeyPatch.context() as mp:
        for var, value in OFFLINE.items():
            mp.setenv(var, value)
        import datasets
        import huggingface_hub.constants

        # Already imported by an earlier test? The flags are read at import time.
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        mp.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        yield


# ------------------------------------------------------------------ data


def _strings(value: Any) -> Iterator[str]:
    """Every string in an exported row (prompts, completions, message contents)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


# ------------------------------------------------------------------ model


def _tokenizer(texts: list[str]) -> Any:
    """A byte-level BPE trained on the export's text, with pad/eos and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>", pad_token="<|pad|>")
    hf.chat_template = CHAT_TEMPLATE
    return hf


def _model(tokenizer: Any) -> Any:
    """A one-layer Llama with 16 hidden units, randomly initialised from a config."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def _args(config_cls: Any, out: Path, **extra: Any) -> Any:
    return config_cls(
        output_dir=str(out), max_steps=1, per_device_train_batch_size=2, learning_rate=1e-3,
        lr_scheduler_type="constant", max_length=2048, report_to=[], save_strategy="no",
        logging_steps=1, use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=0,
        **extra,
    )


def _weights(model: Any) -> list[Any]:
    return [p.detach().clone() for p in model.parameters()]


def _check_step(trainer: Any, before: list[Any], result: Any) -> float:
    """One optimiser step ran, with a finite loss, and moved the weights."""
    import torch

    assert trainer.state.global_step == 1
    loss = float(result.training_loss)
    assert math.isfinite(loss)
    logged = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(logged) == 1
    assert math.isfinite(float(logged[0]))
    after = list(trainer.model.parameters())
    assert any(not torch.equal(b, a.detach()) for b, a in zip(before, after, strict=True))
    return loss


# ------------------------------------------------------------------ the run and its exports


RUNS = {
    # Four samples per task at low skill: some right, some wrong → pairs and both labels.
    "best_of_n": {"n": 4},
    # Critique and repair: refinements that fix (or break) a candidate → refinement pairs.
    "refine": {"max_rounds": 2},
}


async def _sim_runs(store_path: Path) -> dict[str, str]:
    """Run each strategy on sim (in-process, no cache); run id by strategy."""
    from deliberate import RunConfig
    from deliberate.engine.runner import arun

    ids = {}
    for strategy, params in RUNS.items():
        config = RunConfig.model_validate({
            "suite": "arithmetic", "limit": 6, "strategy": strategy, "strategy_params": params,
            "model": "sim?skill=0.3", "seed": 3, "cache": False, "store": str(store_path)})
        ids[strategy] = (await arun(config)).run_id
    return ids


class Exports:
    """The sim runs, made once per module, and their exports, made on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = root / "runs.db"
        self.run_ids = asyncio.run(_sim_runs(self.store))
        self.results: dict[tuple[str, str, bool, str], ExportResult] = {}

    def export(self, kind: str, strategy: str, *, conversational: bool = False,
               fmt: str = "jsonl") -> ExportResult:
        """``deliberate export KIND --run RUN --out DIR`` through the Python API."""
        from deliberate.export.base import ExportOptions
        from deliberate.export.runner import export_run

        key = (kind, strategy, conversational, fmt)
        if key not in self.results:
            out = self.root / "-".join([kind, strategy, "conv" if conversational else "plain",
                                        fmt])
            self.results[key] = export_run(
                str(self.store), self.run_ids[strategy], kind, out, fmt=fmt,
                options=ExportOptions(conversational=conversational))
        return self.results[key]


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, offline: None) -> Exports:
    return Exports(tmp_path_factory.mktemp("trl-exports"))


def _texts(rows: Any) -> list[str]:
    return [s for row in rows for s in _strings(row)]


def _loaded(result: ExportResult, cache: Path) -> Any:
    """The export's train split as a user loads it: ``load_dataset(DIR)``, which finds the
    files through the dataset card's header."""
    from datasets import load_dataset

    data = load_dataset(str(result.out), split="train", cache_dir=str(cache))
    assert result.rows["train"] == result.total_rows > 0  # no test split asked for
    assert data.num_rows == result.total_rows
    return data


# ------------------------------------------------------------------ the trainers


@pytest.mark.parametrize("strategy", list(RUNS))
@pytest.mark.parametrize(("conversational", "fmt"), [(False, "jsonl"), (True, "parquet")],
                         ids=["plain-jsonl", "conversational-parquet"])
def test_dpo_trainer_takes_a_step_on_exported_pairs(
    exports: Exports, tmp_path: Path, strategy: str, conversational: bool, fmt: str
) -> None:
    from trl.data_utils import is_conversational
    from trl.trainer.dpo_config import DPOConfig
    from trl.trainer.dpo_trainer import DPOTrainer

    result = exports.export("dpo", strategy, conversational=conversational, fmt=fmt)
    data = _loaded(result, tmp_path / "hf-cache")
    assert data.column_names == ["prompt", "chosen", "rejected", "provenance"]
    assert all(is_conversational(r) == conversational for r in data)
    tok = _tokenizer(_texts(data.remove_columns("provenance")))
    model = _model(tok)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model),
                         args=_args(DPOConfig, tmp_path / "out"), train_dataset=data,
                         processing_class=tok)
    seen: Any = trainer.train_dataset
    assert seen.num_rows == result.total_rows
    assert {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(seen.column_names)
    assert all(r["prompt_ids"] and r["chosen_ids"] and r["rejected_ids"] for r in seen)
    before = _weights(trainer.model)
    loss = _check_step(trainer, before, trainer.train())
    # Policy and reference start equal, so the first loss is -log σ(0) = log 2 exactly.
    assert loss == pytest.approx(math.log(2), rel=1e-4)


def test_kto_trainer_takes_a_step_on_exported_labels(exports: Exports, tmp_path: Path) -> None:
    from trl.trainer.kto_config import KTOConfig
    from trl.trainer.kto_trainer import KTOTrainer

    result = exports.export("kto", "best_of_n")
    data = _loaded(result, tmp_path / "hf-cache")
    assert data.column_names == ["prompt", "completion", "label", "provenance"]
    assert sorted(set(data["label"])) == [False, True]
    tok = _tokenizer(_texts(data.remove_columns("provenance")))
    model = _model(tok)
    trainer = KTOTrainer(model=model, ref_model=copy.deepcopy(model),
                         args=_args(KTOConfig, tmp_path / "out"), train_dataset=data,
                         processing_class=tok)
    seen: Any = trainer.train_dataset
    assert seen.num_rows == result.total_rows
    assert {"prompt_ids", "completion_ids", "label"} <= set(seen.column_names)
    assert seen["label"] == data["label"]
    before = _weights(trainer.model)
    _check_step(trainer, before, trainer.train())


def test_sft_trainer_takes_a_step_on_exported_trajectories(
    exports: Exports, tmp_path: Path
) -> None:
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    result = exports.export("sft", "best_of_n")
    data = _loaded(result, tmp_path / "hf-cache")
    assert data.column_names == ["messages", "provenance"]
    assert all(r["messages"][-1]["role"] == "assistant" for r in data)
    tok = _tokenizer(_texts(data.remove_columns("provenance")))
    trainer = SFTTrainer(model=_model(tok), args=_args(SFTConfig, tmp_path / "out"),
                         train_dataset=data, processing_class=tok)
    seen: Any = trainer.train_dataset
    assert seen.num_rows == result.total_rows
    assert {"input_ids", "labels"} <= set(seen.column_names)
    before = _weights(trainer.model)
    _check_step(trainer, before, trainer.train())
