"""``ob-finetune --imagery SRC --labels LABELS --out DIR``: a model for my area in minutes.

It checks the labels against the imagery, holds back about a fifth of the labelled buildings in
whole tiles, warns when the labels look shifted against the buildings the base model sees,
scores the base model on the held-back tiles as ``ob-infer`` would run it, fine-tunes from it
(``ob-train``'s loop: mixup on, a constant small learning rate, ended by the time budget or when
the held-back F1 stops improving, the best weights kept and calibrated on the held-back tiles),
scores the result the same way, and writes a model folder that ``ob-infer --model DIR`` runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from open_buildings.commands import add_version, require_train_extra, run_command
from open_buildings.commands.infer import _bands
from open_buildings.errors import OutputExistsError


def parser() -> argparse.ArgumentParser:
    """Return the ``ob-finetune`` argument parser."""
    p = argparse.ArgumentParser(
        prog="ob-finetune",
        description="Fine-tune a building model on your own labelled area and write a model "
        "folder for ob-infer --model, with before/after figures on held-back tiles.",
    )
    add_version(p)
    p.add_argument("--imagery", required=True, help="GeoTIFF/COG (or a folder of them), XYZ, STAC")
    p.add_argument(
        "--labels",
        required=True,
        help="building polygons of the area (GeoJSON, GeoPackage, shapefile; any CRS), e.g. an "
        "OSM export; some may be missing or a little offset",
    )
    p.add_argument(
        "--region",
        help="region GeoJSON: train and check only on the tiles (about 150 m) that hold labelled "
        "buildings inside it (or, unlabelled, lie mostly inside it)",
    )
    p.add_argument(
        "--base", default="default", help="the model to start from (zoo name, checkpoint or folder)"
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=15.0,
        help="training time budget (default 15); scoring before and after comes on top",
    )
    p.add_argument(
        "--freeze-encoder",
        choices=["auto", "yes", "no"],
        default="auto",
        help="train only the decoder and heads, keeping the base's encoder as it is; auto "
        "(default): when there are few buildings to train on (the same rule as the warning: "
        "under 100 buildings or 4 tiles)",
    )
    p.add_argument("--seed", type=int, default=0, help="training seed (the split does not change)")
    p.add_argument("--bands", type=_bands, help="1-based R,G,B band numbers (as ob-infer's)")
    p.add_argument("--threads", type=int, help="CPU threads for training (default: torch's)")
    p.add_argument("--out", required=True, help="the model folder to write (must not exist)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ob-finetune``; return the exit status (0 ok, 2 bad input)."""
    return run_command("ob-finetune", _finetune, parser().parse_args(argv))


def _finetune(args: argparse.Namespace) -> int:
    require_train_extra("ob-finetune")
    from open_buildings.commands.evaluate_model import score_model, write_region
    from open_buildings.config import dump_config
    from open_buildings.geo.imagery import open_imagery
    from open_buildings.geo.regions import read_region
    from open_buildings.models.checkpoint import load_checkpoint
    from open_buildings.pipelines.onnx_backend import export_beside
    from open_buildings.pipelines.runtime import resolve_model
    from open_buildings.training import finetune as plan
    from open_buildings.training.label_offset import WARN_M, label_offset
    from open_buildings.training.loop import CHECKPOINT_DIR, train
    from open_buildings.training.scenes import read_labels
    from open_buildings.training.stopping import BEST_WEIGHTS

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise OutputExistsError(f"--out {out} exists and is not empty; choose a new folder")
    base = resolve_model(args.base)
    base_model = load_checkpoint(base.path)
    source = open_imagery(args.imagery, bands=args.bands)
    region = read_region(args.region).geometry if args.region else None
    labels = read_labels(args.labels)
    area = plan.area_of_interest(source, region)
    split = plan.split_tiles(labels, area, source)
    print(
        f"split: {split.n_train} buildings in {len(split.train)} tiles to train on, "
        f"{split.n_held} in {len(split.held)} held back (level-{plan.SPLIT_LEVEL} S2 tiles)"
    )
    few = split.n_train < plan.FEW_BUILDINGS or len(split.train) < plan.FEW_TILES
    freeze = args.freeze_encoder == "yes" or (args.freeze_encoder == "auto" and few)
    if few:
        warnings.warn(
            f"only {split.n_train} buildings in {len(split.train)} tiles to train on: a model "
            "fine-tuned on this few can get worse on parts of the area that look unlike them. "
            "Give the imagery of the whole area (its unlabelled tiles are self-trained on, which "
            "keeps what the base knows there), label more over varied parts of it, and check the "
            "model with ob-eval-model on a labelled block it did not see. Measured on Nairobi, 54 "
            "buildings in 2 tiles, on an estate of another build: F1 0.43 -> 0.18 with none of "
            "its imagery given, 0.43 -> 0.64 with it",
            stacklevel=1,
        )
    final, out = out, out.with_name(f".{out.name}.partial")  # renamed to --out when complete
    shutil.rmtree(out, ignore_errors=True)  # what an interrupted run left
    work = out / "finetune"
    work.mkdir(parents=True)
    labels_path = str(work / "labels.geojson")
    labels.to_file(labels_path, driver="GeoJSON")
    held_path = write_region(plan.tiles_region(split.held, area), work / "held_back.geojson")
    infer_args = ["--bands", ",".join(map(str, args.bands))] if args.bands else []
    teacher = None
    if len(split.unlabelled) >= plan.MIN_UNLABELLED:
        unlabelled = write_region(
            plan.tiles_region(split.unlabelled, area), work / "unlabelled.geojson"
        )
        teacher = _teacher(args, unlabelled, len(split.unlabelled), work / "teacher", infer_args)
    cfg = plan.finetune_config(
        str(base.path),
        base_model.name,
        imagery=str(Path(args.imagery).resolve()),
        labels=str(Path(labels_path).resolve()),
        split=split,
        out=str(out.resolve()),
        minutes=args.minutes,
        seed=args.seed,
        bands=args.bands,
        threads=args.threads,
        teacher=teacher,
        freeze_encoder=freeze,
    )
    offset = label_offset(base_model, split.train_scenes)
    if offset is not None and offset.metres >= WARN_M:
        warnings.warn(
            f"the labels look shifted by {offset.describe()} against the buildings the base "
            "model sees; fine-tuning learns that shift. Align them (e.g. move them in QGIS or "
            "the OSM editor's imagery offset) if the imagery is right",
            stacklevel=1,
        )
    scored = [(args.imagery, labels_path, held_path)]
    before = score_model(args.base, scored, infer_args=infer_args, quiet=True)
    result = train(cfg, progress=sys.stderr.isatty())
    shutil.rmtree(out / CHECKPOINT_DIR)  # the kept weights are in weights.safetensors
    for leftover in (BEST_WEIGHTS, f"{BEST_WEIGHTS}.sha256"):
        (out / leftover).unlink(missing_ok=True)
    export_beside(result["weights"])
    after = score_model(str(out), scored, infer_args=infer_args, quiet=True)
    # the run's record, with the paths it will have once the folder is renamed to --out
    text = dump_config(cfg).replace(str(out.resolve()), str(final.resolve()))
    (out / "config.yaml").write_text(text, encoding="utf-8")
    report = {
        "base": args.base,
        "base_sha256": base.sha256,
        "imagery": args.imagery,
        "labels": args.labels,
        "region": args.region,
        "seed": args.seed,
        "minutes": args.minutes,
        "encoder_frozen": freeze,
        "self_training_tiles": split.unlabelled if teacher else [],
        "split": {
            "train": split.train,
            "held_back": split.held,
            "n_train": split.n_train,
            "n_held_back": split.n_held,
            "level": plan.SPLIT_LEVEL,
        },
        "label_offset_m": None
        if offset is None
        else {"east": offset.east_m, "north": offset.north_m},
        "steps": result["history"][-1]["step"],
        "best_step": result["best_step"],
        "stopped": result["stopped"],
        "train_seconds": result["seconds"],
        "before": _figures(before),
        "after": _figures(after),
    }
    (out / "finetune.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "MODEL_CARD.md").write_text(model_card(report), encoding="utf-8")
    if final.exists():
        final.rmdir()  # empty, as checked above
    out.rename(final)
    print(comparison(report))
    if report["after"]["default_f1"] < report["before"]["default_f1"]:
        warnings.warn(
            "the fine-tuned model's default output scores below the base's on the held-back "
            f"tiles (F1 {report['after']['default_f1']:.3f} < "
            f"{report['before']['default_f1']:.3f}); keep using --model {args.base}, or label "
            "more of the area and fine-tune again",
            stacklevel=1,
        )
    print(f"model: {final} (ob-infer REGION --imagery ... --model {final})")
    return 0


def _teacher(
    args: argparse.Namespace, region: str, n_tiles: int, out: Path, infer_args: list[str]
) -> str:
    """The base model's probabilities over the unlabelled tiles of ``region`` (self-training's
    soft targets), written by ob-infer on the split's grid to ``out``; return ``out``."""
    from open_buildings.commands import infer as ob_infer
    from open_buildings.errors import InferenceError
    from open_buildings.training.finetune import SPLIT_LEVEL

    argv = [region, "--imagery", args.imagery, "--model", args.base, "--out", str(out),
            "--tile-level", str(SPLIT_LEVEL), "--write-probabilities", "--min-confidence",
            "0", "--no-progress", *infer_args]  # fmt: skip
    print(f"self-training: the base model's probabilities over {n_tiles} unlabelled tiles")
    if ob_infer.main(argv) != 0:
        raise InferenceError("ob-infer failed on the unlabelled tiles; see its message above")
    return str(out.resolve())


def _figures(scored: dict[str, Any]) -> dict[str, Any]:
    best = scored["best_f1"] or {}
    return {
        "default_f1": scored["default_output"]["f1"],
        "default_precision": scored["default_output"]["precision"],
        "default_recall": scored["default_output"]["recall"],
        "threshold": scored["threshold"],
        "best_f1": best.get("f1"),
        "ap50": scored["ap50"],
        "n_truth": scored["n_truth"],
    }


def _kept(step: int | None) -> str:
    if step == 0:
        return "the base's own weights (no step beat them on the held-back tiles), recalibrated"
    return f"the weights of step {step}, the best on the held-back tiles"


def comparison(report: dict[str, Any]) -> str:
    """The before/after table ob-finetune prints and its card holds (Markdown)."""
    rows = [
        "| model | F1 of the default output | best F1 | AP50 | threshold |",
        "|---|---|---|---|---|",
    ]
    for label, key in (("base", "before"), ("fine-tuned", "after")):
        f = report[key]
        cells = [
            f"{f[k]:.3f}" if f[k] is not None else "n/a"
            for k in ("default_f1", "best_f1", "ap50", "threshold")
        ]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    n = report["after"]["n_truth"]
    return f"on the held-back tiles ({n} labelled buildings):\n" + "\n".join(rows)


def model_card(report: dict[str, Any]) -> str:
    """The fine-tuned model's card: what it was made from and how it scores, before and after."""
    offset, split = report["label_offset_m"], report["split"]
    shift = (
        "not measured"
        if offset is None
        else (f"{offset['east']:+.1f} m east, {offset['north']:+.1f} m north")
    )
    stopped = report["stopped"] or "at the step limit"
    lines = [
        "# Fine-tuned building model",
        "",
        f"Written by `ob-finetune` from the base model `{report['base']}` "
        f"(sha256 {report['base_sha256']}).",
        "",
        f"- imagery: `{report['imagery']}`; labels: `{report['labels']}`; "
        f"region: `{report['region']}`",
        f"- split: {split['n_train']} buildings in {len(split['train'])} tiles trained on, "
        f"{split['n_held_back']} in {len(split['held_back'])} tiles held back (S2 level "
        f"{split['level']}; the tokens are in `finetune.json`)",
        f"- training: {report['steps']} steps in {report['train_seconds'] / 60:.1f} min, seed "
        f"{report['seed']}; stopped: {stopped}; kept: {_kept(report['best_step'])}; "
        + (
            "decoder and heads only (the encoder frozen)"
            if report["encoder_frozen"]
            else "all layers"
        ),
        f"- the labels against the base model's buildings: {shift}",
        "",
        "The operating points in the weights' metadata were measured on the held-back tiles, and",
        "ob-infer applies the best-F1 threshold by default. The held-back tiles also chose the",
        'kept step, so the "after" figures are a little optimistic: score the model on another',
        "labelled block of the area (`ob-eval-model`) for an unbiased figure.",
        "",
        comparison(report),
        "",
    ]
    return "\n".join(lines)
