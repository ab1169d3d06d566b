"""The ``edm info`` command: describe a model (kind, source, shape, classes, sigma range, preconditioning,
size, its x0 thresholding, the settings of its files that are not honoured). torch loads when the command
runs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import click

from tools.common import CONTEXT, BadInput, compact, jsonable, one_line

__all__ = ["info", "model_block", "model_record"]


def _parameters(loaded) -> int | None:
    count = loaded.info.get("parameters")
    if isinstance(count, int) and count > 0:
        return count
    try:
        return sum(p.numel() for p in loaded.denoiser.parameters()) or None
    except (AttributeError, TypeError):
        return None


def model_record(spec: str, loaded) -> dict[str, Any]:
    """What ``edm info --json`` prints: the common fields, then everything the loader recorded."""
    info = dict(loaded.info)
    config = info.get("config") if isinstance(info.get("config"), Mapping) else {}
    sigmas = loaded.sigmas
    return {
        "model": spec,
        "kind": loaded.kind,
        "source": loaded.source,
        "shape": list(loaded.shape),
        "num_classes": loaded.num_classes,
        "sigma_min": loaded.sigma_min,
        "sigma_max": loaded.sigma_max,
        "sigma_table": None if sigmas is None else len(sigmas),
        "precond": info.get("scheme") or info.get("precond"),
        "parameters": _parameters(loaded),
        "command": config.get("command") or info.get("command"),
        "info": info,
    }


def _guidance(info: Mapping[str, Any]) -> str:
    scale = info.get("guidance_scale")
    return "0" if scale is None else f"{float(scale) - 1:g} (guidance_scale {float(scale):g})"


def _pipeline_rows(info: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``edm info`` rows of a text-to-image pipeline, as its family declares them."""
    from tools.models.families import for_pipeline
    from tools.models.families.base import PipelineFamily

    return (for_pipeline(info.get("pipeline")) or PipelineFamily()).info_rows(info)


def model_block(record: Mapping[str, Any]) -> str:
    """The readable ``edm info`` block."""
    info = record["info"]
    classes = record["num_classes"]
    channels, height, width = record["shape"]
    rows = [
        ("model", record["model"]),
        ("kind", record["kind"]),
        ("source", record["source"]),
    ]
    if info.get("files"):
        rows.append(("files", ", ".join(str(f) for f in info["files"])))
    if info.get("pipeline"):
        rows += _pipeline_rows(info)
        # a super-resolution pipeline's image conditions are not text
        image = (info.get("low_res") or {}).get("conditions") or []
        weight = info.get("guidance_conditions") or []  # the guidance weight's, as a network input
        text = [c for c in info.get("conditions") or [] if c not in image and c not in weight]
        negative = "" if weight else ", --negative-prompt"
        classes_row = (("classes", f"{classes} (class-conditional: --class 0..{classes - 1}; default "
                                   f"--guidance {_guidance(info)})") if classes else
                       ("conditioning", f"text: {', '.join(text)} (--prompt{negative}; default "
                                        f"--guidance {_guidance(info)})"
                                        + (f"; image: {', '.join(image)} (--low-res, --noise-level)"
                                           if image else "")))
    else:
        rows.append(("image shape", f"{channels} x {height} x {width} (channels x height x width)"))
        classes_row = ("classes", f"{classes} (class-conditional: --class 0..{classes - 1}, --guidance)"
                       if classes else "none (unconditional)")
        if info.get("text"):
            classes_row = ("conditioning", f"text: {info['text']}")
        if info.get("low_res"):
            classes_row = ("conditioning", f"super-resolution: {info['low_res']}")
    rows += [
        classes_row,
        ("sigma range", f"{record['sigma_min']:g} .. {record['sigma_max']:g}"),
        ("sigma table", f"{record['sigma_table']} discrete levels (table schedules: simple, normal, ...)"
         if record["sigma_table"] else "none (continuous sigma)"),
    ]
    if record["precond"] is not None:
        rows.append(("preconditioning", compact(record["precond"])))
    if isinstance(info.get("network"), Mapping):
        network = info["network"]
        rows.append(("network", f"{network.get('name', '?')} {compact(network.get('kwargs', {}))}"))
    if record["parameters"]:
        rows.append(("parameters", f"{record['parameters']:,}"))
    for key in ("prediction", "x0_thresholding", "num_train_timesteps", "layout", "class", "sigma_data",
                "use_fp16", "note", "sampling_default", "guidance_input", "guider_layers"):
        if key in info:
            rows.append((key.replace("_", " "), compact(info[key])))
    for i, setting in enumerate(info.get("ignored") or []):
        rows.append(("not honoured" if i == 0 else "", setting))
    config = info.get("config") if isinstance(info.get("config"), Mapping) else {}
    extras = {k: v for k, v in config.items() if k not in ("format", "network", "precond", "data", "command")}
    rows.append(("training command", record["command"] or "not recorded"))
    for key, value in extras.items():
        rows.append((key.replace("_", " "), compact(value)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


@click.command("info", context_settings=CONTEXT)
@click.argument("model", default="digits", metavar="[MODEL]")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object (all recorded fields) instead.")
@click.option("--trust-pickle", is_flag=True, help="Allow loading a pickle (runs code when loaded).")
def info(model: str, as_json: bool, trust_pickle: bool) -> None:
    """Describe a model: kind, source, image shape, classes, sigma range, preconditioning, size.

    MODEL is 'digits' (the built-in model, the default), a checkpoint NAME[.json|.safetensors],
    'diffusers:DIR' or an NVlabs network .pkl (with --trust-pickle).

    \b
    Examples:
      edm info
      edm info runs/ckpt.json --json
    """
    from .loader import load_model

    try:
        loaded = load_model(model, device="cpu", trust_pickle=trust_pickle)
    except BadInput as e:
        raise click.BadParameter(one_line(e), param_hint="'MODEL'") from None
    record = model_record(model, loaded)
    if as_json:
        click.echo(json.dumps(jsonable(record), indent=2, allow_nan=False))
    else:
        click.echo(model_block(record))
