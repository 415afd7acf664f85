"""``dataspex curate``: act on the report, and measure whether acting helped, on data the ranking never saw.

1. The changes: the report's harmful findings (``curate.actions=validated``: only the pairs whose interaction
   ``dataspex validate`` confirmed and whose removal lowered both its test example's loss and the mean test loss;
   ``predicted``: every harmful finding),
   each pair dropped, or relabelled where
   the report suggests it and ``curate.relabel=true``.
2. The curated training set in the user's format, and a manifest of each change with its pair and evidence
   (``<run_dir>/curate/``).
3. A paired retraining study (:mod:`dataspex.design.curation`): the full set, the curated set,
   ``random_draws`` random removals of as many examples and each baseline's removals (linear, TRAK, cleanlab,
   DataInf:
   :mod:`dataspex.fit.baselines`),
   ``curate.seeds`` replicates each, every model scored on the **eval split**. It lives in its own store under
   ``curate/study-<digest>/`` (the digest covers the curated data and the arms), so it resumes and never mixes two
   different curated sets.
4. The verdict (:mod:`dataspex.validate.curation`): helped / no measurable effect / hurt, with t-intervals.

Nothing to act on (no finding, or none confirmed) is a result, not an error: it is written and said.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os

import numpy as np
from omegaconf import open_dict

from dataspex.core.data import TaskData
from dataspex.core.errors import DataspexError
from dataspex.core.export import format_for, split_frame, write_split
from dataspex.core.files import write_json
from dataspex.core.models import load_base_model, load_tokenizer
from dataspex.design.curation import CurationPlan, arm_masks, augmented_split, curation_design, random_removals
from dataspex.design.crossfit import crossfit_design, fold_assignment, label_expansion
from dataspex.fit.baselines import BASELINES, cleanlab_harm, harm_scores, out_of_fold_probs, top_harmful
from dataspex.fit.datainf import datainf_influence
from dataspex.fit.lora_gradients import lora_gradients, mean_gradient
from dataspex.report.context import gather, load_models, load_trak
from dataspex.stages.rundir import fingerprint, open_run
from dataspex.stages.train import train_chunks
from dataspex.store import RunStore
from dataspex.train import get_engine
from dataspex.train.common import encode
from dataspex.train.naive import finetune
from dataspex.stages.report import report_run
from dataspex.validate.analysis import ELSEWHERE_NUMBERS, validated_harmful
from dataspex.validate.curation import analyse_curation, save_curation

__all__ = ["RunModel", "cleanlab_baseline", "datainf_baseline", "open_study", "plan_changes", "settings",
           "stage_curate", "train_study"]

log = logging.getLogger("dataspex")

ACTION_SOURCES = ("validated", "predicted")


def settings(cfg) -> dict:
    """The ``curate:`` block, checked (the numbers are checked by :mod:`dataspex.core.settings`)."""
    block = cfg.curate
    source = str(block.actions)
    if source not in ACTION_SOURCES:
        raise DataspexError(f"curate.actions={source!r} is not one of: {', '.join(ACTION_SOURCES)}")
    baselines = [str(b) for b in block.baselines]
    bad = [b for b in baselines if b not in BASELINES]
    if bad:
        raise DataspexError(f"curate.baselines has {bad}: use {', '.join(BASELINES)}")
    return {"actions": source, "relabel": bool(block.relabel), "seeds": int(block.seeds),
            "random_draws": int(block.random_draws), "baselines": baselines, "level": float(block.level),
            "format": str(block.format), "cleanlab_folds": int(block.cleanlab_folds)}


def plan_changes(actions, data, source: str, relabel: bool, validated: bool,
                 units=None) -> tuple[CurationPlan, list[dict]]:
    """The curated set's changes from the report's actions table, and one manifest entry per changed example.
    With ``units`` (a design over units) a pair's ``i``, ``j`` are units: every member is dropped, and its entry
    names its unit."""
    harmful = actions[actions["kind"] == "harmful"] if len(actions) else actions
    if source == "validated" and not validated and len(harmful):  # no harmful action: nothing to validate either
        raise DataspexError("curate.actions=validated acts on the pairs `dataspex validate` confirmed, and this run "
                            "has not been validated: run `dataspex validate run_dir=...` first, or set "
                            "curate.actions=predicted to act on the ranking model's findings unconfirmed")
    if source == "validated" and len(harmful):
        harmful = validated_harmful(harmful)
    dropped, relabelled, entries = {}, {}, []
    for row in harmful.itertuples():
        suggest = relabel and str(row.action).startswith("relabel") and data.task == "classification"
        pair = (int(row.i), int(row.j))
        for x in (pair if units is None else units.members_of(pair)):
            if x in dropped or x in relabelled:
                continue
            evidence = {"pair": list(pair), "test": int(row.test), "pattern": row.pattern,
                        "report_action": row.action, "verdict": row.verdict, "removal": row.removal,
                        "removal_elsewhere": str(getattr(row, "removal_elsewhere", "-")),
                        **{key: _number(getattr(row, key, np.nan)) for key in (
                            "predicted_change_if_both_removed", "realised_change_if_both_removed",
                            "realised_low", "realised_high", *ELSEWHERE_NUMBERS)}}
            entry = {"row": x, "text": data.train.texts[x]}
            if units is not None:
                entry["unit"] = units.names[int(units.unit_of[x])]
                evidence["pair_units"] = [units.names[u] for u in pair]
            if suggest:
                new = int(data.test.labels[int(row.test)])
                relabelled[x] = new
                entry.update(change="relabel", label=data.label_names[int(data.train.labels[x])],
                             new_label=data.label_names[new])
            else:
                dropped[x] = True
                if data.train.labels is not None:
                    entry["label"] = data.label_names[int(data.train.labels[x])]
                entry["change"] = "drop"
            entries.append(dict(entry, evidence=evidence))
    return CurationPlan(data.n_train, list(dropped), relabelled), entries


def _number(x) -> float | None:
    """A float for JSON, None for a value that is missing (NaN: not validated)."""
    return float(x) if x is not None and np.isfinite(float(x)) else None


def _write_curated(cfg, data, plan: CurationPlan, out_dir: str, fmt: str) -> str:
    """The curated training set (dropped rows left out, relabelled rows with their new label) in ``fmt``."""
    keep = [i for i in range(data.n_train) if i not in set(plan.dropped)]
    texts = [data.train.texts[i] for i in keep]
    columns = {name: [values[i] for i in keep] for name, values in (data.train.columns or {}).items()}
    if data.train.labels is not None:
        labels = np.array([plan.relabelled.get(i, int(data.train.labels[i])) for i in keep], dtype=np.int64)
        split = type(data.train)(texts, labels, columns=columns)
    else:
        split = type(data.train)(texts, completions=[data.train.completions[i] for i in keep], columns=columns)
    return write_split(split_frame(split, keep, cfg.data, data.label_names), os.path.join(out_dir, "train_curated"),
                       fmt)


def _study_digest(aug_train, arms: dict, eval_hash: str) -> str:
    """What a curation study's results depend on beyond the run: the augmented train split, the arms, the eval
    split (a change in any gives a new study directory, never a mix)."""
    h = hashlib.sha256(eval_hash.encode())
    h.update(repr(aug_train.texts).encode())
    h.update(b"" if aug_train.labels is None else aug_train.labels.tobytes())
    for name, mask in arms.items():
        h.update(name.encode() + b"|" + mask.tobytes())
    return h.hexdigest()[:12]


class RunModel:
    """The run's tokenizer and base model (its head from ``train.seed``), loaded on first use and then shared by
    every retraining of this stage (the cross-fit and the curation study)."""

    def __init__(self, cfg, n_labels: int | None):
        self.cfg, self.n_labels, self._loaded = cfg, n_labels, None

    def get(self):
        if self._loaded is None:
            self._loaded = (load_tokenizer(self.cfg.model),
                            load_base_model(self.cfg.model, self.n_labels, self.cfg.train.seed))
        return self._loaded

    def train(self, cfg, store: RunStore, design, todo, train_split, scored_split, task: str) -> None:
        tokenizer, base = self.get()
        train = encode(train_split, tokenizer, task, cfg.model.max_length)
        scored = encode(scored_split, tokenizer, task, cfg.model.max_length)
        train_chunks(cfg, store, design, todo, get_engine(cfg.train.engine), base, train, scored)


def _todo(store: RunStore, design, rows) -> np.ndarray:
    done = store.done_ids()
    return np.array([r for r in rows if int(design.mask_ids[r]) not in done], dtype=np.int64)


def train_study(cfg, sub: RunStore, design, aug: TaskData, seeds: int, model: RunModel | None = None) -> int:
    """Retrain the study's missing rows of replicates < ``seeds`` in one engine call (full passes), every arm of
    replicate s under one seed: ``seed_policy=per_block`` with blocks of ``n_arms`` ids (row id = s * n_arms +
    arm), so replicate s's seed is ``mask_seed(train.seed, s, "per_mask")``. Returns how many were trained."""
    todo = _todo(sub, design, np.flatnonzero(np.asarray(design.meta["replicate"]) < seeds))
    if not len(todo):
        return 0
    study_cfg = copy.deepcopy(cfg)
    with open_dict(study_cfg):
        study_cfg.train.seed_policy = "per_block"
        study_cfg.train.seed_block = len(design.meta["arms"])
    model = model or RunModel(cfg, len(aug.label_names) if aug.label_names else None)
    model.train(study_cfg, sub, design, todo, aug.train, aug.test, aug.task)
    return len(todo)


def cleanlab_baseline(cfg, store, data, folds: int, model: RunModel) -> tuple[np.ndarray, list[int], int]:
    """cleanlab's harm scores from K-fold retrains (``curate/crossfit-<K>/``, resumable; the run's own seed policy),
    the examples it flags, and how many retrains were new."""
    fold_of = fold_assignment(data.n_train, folds, int(cfg.train.seed))
    design = crossfit_design(fold_of)
    expanded = label_expansion(data.train, len(data.label_names))
    sub = RunStore(store.path("curate", f"crossfit-{folds}"))
    os.makedirs(sub.run_dir, exist_ok=True)
    sub.check_fingerprint(fingerprint(cfg, TaskData(data.train, expanded, data.task, data.label_names)), create=True)
    if not sub.has_design():
        sub.save_design(design)
    todo = _todo(sub, design, np.arange(len(design)))
    if len(todo):
        log.info("curate: cleanlab baseline: %d-fold retrains, each scoring its fold's %d x %d label rows", folds,
                 data.n_train, len(data.label_names))
        model.train(cfg, sub, design, todo, data.train, expanded, data.task)
    results = sub.load_results(design)
    probs = out_of_fold_probs(results.losses, fold_of, len(data.label_names))
    harm, flagged = cleanlab_harm(data.train.labels, probs)
    return harm, flagged, len(todo)


# The full-data model DataInf differentiates is seeded as a mask with this id (apart from designs' and TRAK's ids).
_DATAINF_MODEL_ID = 2**31 - 128


def datainf_baseline(cfg, data, model: RunModel) -> np.ndarray:
    """DataInf's influence of each training example on the mean test loss (harm, (n_train,)): the LoRA gradients
    of a model fine-tuned on the whole training set (the run's recipe and head), per training and test example."""
    tokenizer, base = model.get()
    train = encode(data.train, tokenizer, data.task, cfg.model.max_length)
    test = encode(data.test, tokenizer, data.task, cfg.model.max_length)
    peft_model = finetune(base, cfg.lora, cfg.train, train, np.ones(data.n_train, dtype=np.uint8), _DATAINF_MODEL_ID)
    train_grads, test_grads = lora_gradients(peft_model, train), lora_gradients(peft_model, test)
    return datainf_influence(train_grads, mean_gradient(test_grads))


def open_study(cfg, out_dir: str, aug: TaskData, arms: dict, seeds: int, eval_hash: str) -> tuple[RunStore, object]:
    """The store and design of a curation study: ``<out_dir>/study-<digest>`` (:func:`_study_digest`: another train
    split, arm or eval split is another study, never a mix), fingerprinted with the run's model and recipe and the
    curation seed policy, its design ``arms`` x ``seeds``. More seeds than the stored design extend it (the same
    ids for the rows it had, new ones after); fewer reuse it."""
    sub = RunStore(os.path.join(out_dir, f"study-{_study_digest(aug.train, arms, eval_hash)}"))
    os.makedirs(sub.run_dir, exist_ok=True)
    study_fp = fingerprint(cfg, aug)
    study_fp["train"]["seed_policy"] = "curate: per_block, one block of ids (one seed) per replicate"
    sub.check_fingerprint(study_fp, create=True)
    design = curation_design(arms, seeds)
    if sub.has_design() and len(sub.load_design()) >= len(design):
        return sub, sub.load_design()
    sub.save_design(design)
    return sub, design


def _nothing_to_act_on(ctx, name: str, source: str) -> str:
    """Why a curation changes no example, most basic reason first."""
    trust = ctx["trust"]
    if not trust["trusted"]:
        pooled = "n/a" if trust["r2_pooled"] is None else format(trust["r2_pooled"], ".3f")
        return (f"the ranking model {name} is below report.trust_r2 (pooled held-out R^2 {pooled} < "
                f"{trust['trust_r2']:g}): the report lists candidates only")
    if ctx["result"].degree < 2:
        return f"the most faithful model, {name}, has no pair terms: the report lists no pair"
    if source == "predicted" or ctx["actions"].empty:
        return "no harmful pair is a finding of the report"
    return ("`dataspex validate` confirmed no harmful pair (its interaction confirmed and its removal lowering "
            "both its test example's loss and the mean test loss)")


def stage_curate(cfg) -> dict:
    opts = settings(cfg)
    store, data = open_run(cfg)
    if data.eval is None:
        raise DataspexError("dataspex curate scores the curated set on an eval split, and this run's data has none: "
                            "set data.eval_file=<file> (data=files), data.eval_split=<split> (data=hub) or "
                            "data.n_eval=<rows> (the demo). It is not part of the run's fingerprint: it can be added "
                            "to a finished run")
    fitted, faithfulness, name = load_models(cfg, store)
    ctx = gather(cfg, store, data, fitted, faithfulness, name)
    units = ctx["units"]
    plan, entries = plan_changes(ctx["actions"], data, opts["actions"], opts["relabel"],
                                 ctx["validation"] is not None, units)
    out_dir = store.path("curate")
    os.makedirs(out_dir, exist_ok=True)
    meta = {"actions": opts["actions"], "relabel": opts["relabel"], "ranking_estimator": name,
            "n_train": data.n_train, "n_eval": data.n_eval, "changes": entries}
    if not plan.n_changed:
        why = _nothing_to_act_on(ctx, name, opts["actions"])
        summary = dict(meta, verdict="nothing to act on", why=why)
        save_curation(store, summary)
        log.info("curate: nothing to act on (%s); no curated set written", why)
        report_run(cfg, store, data)
        return summary
    fmt = format_for(cfg.data, opts["format"])
    curated_path = _write_curated(cfg, data, plan, out_dir, fmt)
    write_json(os.path.join(out_dir, "manifest.json"), meta)

    k = plan.n_changed
    removals = {f"random:{d}": draw for d, draw in
                enumerate(random_removals(data.n_train, k, opts["random_draws"], int(cfg.train.seed)))}
    harms = harm_scores(fitted, load_trak(store, data.n_train, data.n_test) if "trak" in opts["baselines"] else None)
    if units is not None and "linear" in harms:  # fitted over units: each member takes its unit's harm
        harms["linear"] = harms["linear"][units.unit_of]
    model = RunModel(cfg, len(data.label_names) if data.label_names else None)
    flagged = None
    if "cleanlab" in opts["baselines"] and data.task == "classification":
        harms["cleanlab"], flagged, _ = cleanlab_baseline(cfg, store, data, opts["cleanlab_folds"], model)
        log.info("curate: cleanlab flags %d of %d training examples as label issues", len(flagged), data.n_train)
    if "datainf" in opts["baselines"]:
        log.info("curate: DataInf baseline: LoRA gradients of a full-data model on %d train and %d test examples",
                 data.n_train, data.n_test)
        harms["datainf"] = datainf_baseline(cfg, data, model)
    skipped = [b for b in opts["baselines"] if b not in harms]
    if skipped:
        log.warning("curate: baseline(s) %s skipped: %s", skipped, "; ".join({
            "linear": "no linear datamodel in this run's fit (add estimator@estimators.linear)",
            "trak": "no TRAK scores (run `dataspex trak run_dir=...` first)",
            "cleanlab": "label issues need a classification task"}[b] for b in skipped))
    baselines = {b: top_harmful(harms[b], k) for b in opts["baselines"] if b in harms}
    removals.update(baselines)
    arms = arm_masks(plan, removals)
    aug = TaskData(train=augmented_split(data.train, plan), test=data.eval, task=data.task,
                   label_names=data.label_names)
    sub, design = open_study(cfg, out_dir, aug, arms, opts["seeds"], data.eval_hash())
    log.info("curate: %d examples changed (%d dropped, %d relabelled); %d arms x %d seeds = %d retrains, scored "
             "on %d eval rows", k, len(plan.dropped), len(plan.relabelled), len(arms), opts["seeds"],
             len(arms) * opts["seeds"], data.n_eval)
    trained = train_study(cfg, sub, design, aug, opts["seeds"], model)
    log.info("curate: trained %d, reused %d", trained, len(arms) * opts["seeds"] - trained)
    results = sub.load_results(design)
    removed = {a: int((arms["full"][:data.n_train] != m[:data.n_train]).sum()) for a, m in arms.items()}
    table, verdict = analyse_curation(design, results, opts["seeds"], opts["level"], data.task, removed)
    summary = dict(meta, **verdict, curated_file=curated_path, format=fmt, study=sub.run_dir,
                   arms={a: sorted(int(i) for i in np.flatnonzero(arms["full"][:data.n_train]
                                                                  != m[:data.n_train])) for a, m in arms.items()},
                   skipped_baselines=skipped, cleanlab_flagged=flagged, settings=opts)
    save_curation(store, summary, table)
    for row in table.itertuples():
        log.info("curate: %-16s removes %3d: eval loss %.4f, change %+.4f [%+.4f, %+.4f]", row.arm, row.removed,
                 row.eval_loss, row.loss_change, row.loss_change_low, row.loss_change_high)
    log.info("curate: verdict on the curated set: %s (curated file %s)", verdict["verdict"], curated_path)
    report_run(cfg, store, data)
    return summary


