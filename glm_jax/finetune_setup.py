"""What ``glm-jax finetune`` and ``glm-jax eval`` do around the fine-tuning loop:
the run config over a model directory's, the seqio task registered with its
tokenizer, and the scoring of a model directory.

    config, pretrained, source = finetune_setup.load_run_config("rte", "runs/x/model")
    task_name = finetune_setup.register_task(config, model_dir.load_vocabulary("runs/x/model"))
    data = SuperGLUEData(task_name, config.finetune, mesh)   # glm_jax/data/superglue/finetune_data.py
    finetune.run(config, data, ...)

Both commands read the same YAML (configs/finetune/<task>.yaml, or the one given)
on top of the model directory's config, so evaluation scores exactly as
fine-tuning did (pattern, sequence length, WSC's length penalty, eval batch size).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from glm_jax import cloze, model_dir, train_state
from glm_jax import config as config_lib
from glm_jax.data import seq2seq_evaluation, seq2seq_tasks, superglue
from glm_jax.data.superglue.finetune_data import SuperGLUEData
from glm_jax.data.tokenizers import TokenizerConfig
from glm_jax.finetune import RUN_CONFIG, FinetuneRunConfig, Objective, check_same_architecture
from glm_jax.model import ModelConfig
from glm_jax.seq2seq_finetune import Seq2SeqObjective

# The tasks a run registers get this prefix (glm_finetune_rte, glm_finetune_rte_pattern4).
TASK_PREFIX = "glm_finetune"


def is_seq2seq(task: str) -> bool:
    """Whether ``task`` is a conditional-generation task (glm_jax/data/seq2seq_tasks.py)."""
    return task.lower() in seq2seq_tasks.TASKS


def check_task(task: str) -> None:
    """ValueError naming the known tasks when ``task`` (any case) is none of them."""
    if task.lower() not in {t.lower() for t in superglue.TASKS} and not is_seq2seq(task):
        known = ", ".join(t.lower() for t in superglue.TASKS)
        raise ValueError(f"--task {task}: not a fine-tuning task; expected a SuperGLUE task ({known}) or a seq2seq "
                         f"task ({', '.join(seq2seq_tasks.TASKS)})")


def load_run_config(
    task: str,
    checkpoint: str,
    *,
    config: Optional[str] = None,
    data_dir: Optional[str] = None,
    pattern_id: Optional[int] = None,
    output_dir: Optional[str] = None,
    overrides: Sequence[str] = (),
    stored: bool = False,
) -> tuple[FinetuneRunConfig, ModelConfig, str]:
    """``(run config, the model directory's ModelConfig, the YAML's name)``: the YAML
    over the model directory's config, then ``overrides``, then the other arguments.

    The YAML is ``config``; else, with ``stored`` (``glm-jax eval``), the run config
    stored in a fine-tuned model directory if it is for ``task``; else
    configs/finetune/<task>.yaml.

    Raises:
      ValueError: an unknown task, a bad model directory or YAML, or a run config
        that changes the model's architecture.
    """
    check_task(task)
    task = task.lower()
    if pattern_id is not None and is_seq2seq(task):
        raise ValueError(f"--pattern-id applies to SuperGLUE tasks; {task} is a seq2seq task")
    model_dir.check_model_dir(checkpoint)
    pretrained = model_dir.read_config(Path(checkpoint) / model_dir.CONFIG_FILE)
    source = config or (_stored_config(checkpoint, task) if stored else None) or f"finetune/{task}"
    flags = [f"finetune.task={task}"]
    if data_dir is not None:
        flags.append(f"finetune.data_dir={_yaml_str(data_dir)}")
    if pattern_id is not None:
        flags.append(f"finetune.pattern_id={pattern_id}")
    if output_dir is not None:
        flags.append(f"finetune.output_dir={_yaml_str(output_dir)}")
    run_config = config_lib.load_config_as(
        FinetuneRunConfig, source, [*overrides, *flags],
        base={"model": config_lib.to_dict(pretrained)},
        base_where=str(Path(checkpoint) / model_dir.CONFIG_FILE),
    )
    check_same_architecture(run_config.model, pretrained, checkpoint)
    return run_config, pretrained, source


def _stored_config(checkpoint: str, task: str) -> Optional[str]:
    """The run config stored beside a fine-tuned model's weights, if it is for ``task``."""
    path = Path(checkpoint) / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        stored_task = (yaml.safe_load(path.read_text()) or {}).get("finetune", {}).get("task")
    except (yaml.YAMLError, AttributeError):
        return None  # not ours to judge: the default config is used instead
    return str(path) if stored_task == task else None


def _yaml_str(text: str) -> str:
    """A path as a YAML string scalar in a key=value override, whatever it contains."""
    return json.dumps(text)


def register_task(config: FinetuneRunConfig, vocabulary: Any) -> str:
    """Register ``config.finetune``'s task (data folder or TFDS, pattern, length) with
    ``vocabulary`` under :data:`TASK_PREFIX`, replacing an earlier registration; returns
    the seqio task name."""
    ft = config.finetune
    if is_seq2seq(ft.task):
        s2s = config.seq2seq
        if s2s.src_length > config.model.max_position_embeddings or s2s.tgt_length >= config.model.max_position_embeddings:
            raise ValueError(
                f"seq2seq.src_length={s2s.src_length} / seq2seq.tgt_length={s2s.tgt_length} need positions beyond "
                f"the model's max_position_embeddings={config.model.max_position_embeddings}")
        return seq2seq_tasks.register_seq2seq_task(
            ft.task, vocabulary=vocabulary, src_length=s2s.src_length, tgt_length=s2s.tgt_length,
            data_dir=ft.data_dir, prefix=TASK_PREFIX, overwrite=True, mask_ratio=s2s.mask_ratio)
    superglue.register_superglue_tasks(
        vocabulary=vocabulary, data_dir=ft.data_dir, prefix=TASK_PREFIX, tasks=[ft.task],
        pattern_ids=[] if ft.pattern_id is None else [ft.pattern_id], max_seq_length=ft.max_seq_length,
        overwrite=True,
    )
    name = superglue.task_name(ft.task, ft.pattern_id, TASK_PREFIX)
    check_task_fits(superglue.task_info(name), config.model)
    return name


def task_data(config: FinetuneRunConfig, task_name: str, mesh: Any) -> Any:
    """The fine-tuning loop's data for the registered task ``task_name``."""
    if is_seq2seq(config.finetune.task):
        return seq2seq_evaluation.Seq2SeqData(task_name, config.finetune, mesh)
    return SuperGLUEData(task_name, config.finetune, mesh)


def objective_for(config: FinetuneRunConfig, vocabulary: Any, print_fn=print) -> Objective:
    """The loss and scoring of ``config.finetune.task``'s family (glm_jax/finetune.py)."""
    if is_seq2seq(config.finetune.task):
        return Seq2SeqObjective(vocabulary.command_tokens, print_fn)
    return cloze.ClozeObjective()


def check_task_fits(info: superglue.ClozeTaskInfo, model: ModelConfig) -> None:
    """Problems that would otherwise surface late: inside the tf.data pipeline (a long
    traceback, sometimes a hang at teardown) or as NaN logits from position ids beyond
    the model's position table, which train and evaluate silently."""
    if info.max_seq_length > model.max_position_embeddings:
        raise ValueError(
            f"finetune.max_seq_length={info.max_seq_length} ({info.task}'s rows) exceeds the model's "
            f"max_position_embeddings={model.max_position_embeddings}: set finetune.max_seq_length to at most "
            f"{model.max_position_embeddings}")
    if not info.multi_token:
        info.verbalizer_ids()  # raises, naming the task and pattern, if the label words collide


def absolute_tokenizer(checkpoint: str) -> Optional[TokenizerConfig]:
    """The model directory's TokenizerConfig with absolute file paths (to copy into an
    exported model), or None when it records none."""
    tokenizer = model_dir.read_tokenizer(checkpoint)
    if tokenizer is None:
        return None
    files = tokenizer.files(base=checkpoint)
    return dataclasses.replace(
        tokenizer, vocab_file=str(files["vocab_file"].resolve()),
        merges_file=str(files["merges_file"].resolve()) if "merges_file" in files else None,
    )


def evaluate_checkpoint(
    config: FinetuneRunConfig, checkpoint: str, task_name: str, split: str, output_dir: str, mesh: Any,
    print_fn=print,
) -> tuple[dict[str, float], dict[str, float]]:
    """Score the model directory ``checkpoint`` on ``split`` of the registered task
    ``task_name``, as fine-tuning evaluates an epoch (``config.finetune``'s loss and
    length penalty); the predictions file goes to ``output_dir``.

    Returns:
      ``(metrics in percent, the summed eval sums)``; the sums' ``predicted`` counts
      the examples.
    """
    ft = config.finetune
    _, param_shardings = train_state.params_layout(config.model, mesh)
    _, params = model_dir.load_model_dir(checkpoint, shardings=param_shardings)
    if is_seq2seq(ft.task):
        data = seq2seq_evaluation.Seq2SeqData(task_name, ft, mesh)
        objective = Seq2SeqObjective(model_dir.load_vocabulary(checkpoint).command_tokens, print_fn).bind(config, mesh)
        scores, _ = objective.evaluate(params, data, output_dir, split=split)
        return scores, {"predicted": float(data.num_examples(split))}
    eval_step = cloze.eval_step_for(config.model, mesh, ft.loss, ft.length_penalty)
    sums: dict[str, float] = {}

    def predict_fn(batches):
        choices, batch_sums = cloze.predict(eval_step, params, batches, mesh)
        sums.update(batch_sums)
        return choices

    scores = SuperGLUEData(task_name, ft, mesh).evaluate(predict_fn, output_dir, split=split)
    return scores, sums
