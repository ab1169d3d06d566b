"""The generation pipeline: one PNG per seed, reproducible per seed, resumable, on one or many processes.

``generate(request, seeds, outdir)`` (a :class:`tools.request.SamplingRequest`, or its fields as
keywords: ``generate("digits", "0-63", "out", sampler="euler")``) validates everything (model, sampler and
its options, schedule, steps or NFE budget, class, guidance, output paths) before it writes anything,
then samples the seeds in batches and writes ``{seed:06d}.png`` per seed (``--subdirs``: in
``{seed - seed % 1000:06d}/``).

* Reproducible per seed: the latent is ``samplers.noise.latents`` (NVlabs' per-seed stream), the
  sampler's noise comes from the seed's own streams and a random class label is drawn from the seed
  as NVlabs' ``generate.py`` draws it (the next draw of the latent's generator), so an image does not
  depend on the batch size, its position in the batch or the number of processes. (The network's
  arithmetic may: float32 matrix products can round differently for different batch sizes; float64
  makes that invisible in 8-bit images.)
* Atomic and resumable: each PNG is written to a hidden temporary file in its directory and renamed
  onto its name, so no partial ``*.png`` ever exists; existing PNGs are skipped unless ``overwrite``,
  so an interrupted run picks up where it stopped.
* Recorded: the settings that decide the images are written to ``edm-generate.json`` in the folder; a
  rerun with other settings is refused (naming what differs) unless ``overwrite``.
* Distributed: under ``torchrun`` (``WORLD_SIZE``/``RANK`` set) each rank takes ``seeds[rank::world]``
  and batches them (gloo on CPU, NCCL on CUDA); the images equal a single-process run's.

``prepare(request, output)`` (an :class:`Output`: seeds, folder, batch, ...) does the validation and returns
a :class:`Plan`, which holds the request, its checked :class:`Sampling` and the output; ``run(plan)`` does
the work.

Modules: :mod:`.sampling` (what is sampled, checked once for every command that samples:
``prepare_sampling(request)``), :mod:`.low_res` (a super-resolution model's ``--low-res`` input),
:mod:`.cascade` (a base model then a super-resolution model, ``--sr-model``), :mod:`.plan` (the job),
:mod:`.runner` (the work), :mod:`.record` (the folder's settings), :mod:`.cli` (``edm generate``).
PNG and grid I/O is :mod:`tools.images`; devices and dtypes :mod:`tools.device`; ranks :mod:`tools.ranks`.
Names are imported on first use, so the CLI module loads without torch.
"""

from tools.common import lazy_exports

_EXPORTS = {
    "DEFAULT_STEPS": "tools.schedules.steps", "resolve_steps": "tools.schedules.steps",
    "schedule_sigmas": "tools.schedules.steps",
    "class_labels": "tools.labels", "conditioning": "tools.labels",
    "GUIDANCE_MEANING": ".sampling", "Sampling": ".sampling", "prepare_sampling": ".sampling",
    "check_sampler": ".sampling",
    "GenerateError": ".plan", "Output": ".plan", "Plan": ".plan", "prepare": ".plan",
    "Summary": ".runner", "generate": ".runner", "run": ".runner", "sample_images": ".runner",
    "RECORD_NAME": ".record",
    "Cascade": ".cascade", "prepare_stages": ".cascade", "stage_seeds": ".cascade",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
