"""A MONAI Label app serving salt_seg: a trained run or a base checkpoint (default: the built-in base).

Start it with ``python apps/monailabel/serve.py --studies DIR [-c run RUN_DIR] [-c checkpoint builtin]`` (the README,
"Using salt_seg from 3D Slicer / OHIF"). Options (``-c KEY VALUE``, MONAI Label's ``--conf``):

``run``
    a ``salt-seg train`` run directory or adapter file; without it the base checkpoint alone answers prompts.
``checkpoint``
    the base weights (``builtin``, ``builtin128`` or a file); default: the one the run names, else ``builtin``.
``variant``, ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``), ``batch_size`` (slices per encoder call).

Infer tasks: ``salt_seg_interactive`` (DeepEdit type: foreground/background clicks and a box) always, and
``salt_seg_auto`` (segmentation type: every class on every slice with the run's class tokens) when the model has
class tokens for all its classes (a run trained with ``prompt: auto`` or ``mixed``).
"""

from __future__ import annotations

import logging
import threading

from saltseg_tasks import SaltSegInfer, allow_pydicom_seg_on_pydicom3, load_model

allow_pydicom_seg_on_pydicom3()

from monailabel.interfaces.app import MONAILabelApp  # noqa: E402 - needs the pydicom 3 mapping above

log = logging.getLogger(__name__)


class SaltSegApp(MONAILabelApp):
    """salt_seg in MONAI Label (see the module docstring for the ``--conf`` options)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = dict(conf or {})
        self.loaded = load_model(
            conf.get("run") or None,
            conf.get("checkpoint") or None,
            conf.get("variant") or None,
            conf.get("device", "auto"),
        )
        self.batch_size = int(conf.get("batch_size", 8))
        source = conf.get("run") or f"base {self.loaded.meta.get('base_checkpoint')}"
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="salt_seg",
            description=f"salt_seg ({source}): SAM with SALT adapters, slice by slice",
            version="1",
            # no labels: MONAI Label lists the tasks' labels, "background" included, as DeepEdit apps do; Slicer's
            # DeepEdit mode sends the clicks of each listed label's segment, so background's are the negative ones
        )

    def init_infers(self) -> dict[str, SaltSegInfer]:
        lock = threading.Lock()
        names = dict(self.loaded.class_names)
        tasks = {
            "salt_seg_interactive": SaltSegInfer(
                self.loaded,
                interactive=True,
                description="salt_seg from clicks (foreground/background) or a box (roi), propagated over slices",
                batch_size=self.batch_size,
                lock=lock,
            )
        }
        n_tokens = int(getattr(self.loaded.model, "num_classes", 0) or 0)
        if n_tokens >= max(names):
            tasks["salt_seg_auto"] = SaltSegInfer(
                self.loaded,
                interactive=False,
                description="salt_seg automatic: the run's class tokens on every slice",
                batch_size=self.batch_size,
                lock=lock,
            )
        else:
            log.info(
                "no automatic task: the model has no class tokens (a base checkpoint, or a box/point run)"
            )
        return tasks
