"""Start MONAI Label's server with the salt_seg app: ``monailabel start_server --app <this folder>``, runnable here.

    python apps/monailabel/serve.py --studies DIR [-c run RUN_DIR] [-c checkpoint builtin] [--host H] [--port P]

Every option is ``monailabel start_server``'s; ``--app`` defaults to this folder. The one difference from running
``monailabel start_server`` itself: pydicom-seg's import of a module pydicom 3 removed is mapped first
(:func:`saltseg_tasks.allow_pydicom_seg_on_pydicom3`), since MONAI Label's web app imports pydicom-seg before it
loads ``main.py``. ``--check`` only imports the server and the app (the install script's last step).
"""

from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(APP_DIR))
    from saltseg_tasks import allow_pydicom_seg_on_pydicom3

    allow_pydicom_seg_on_pydicom3()
    if argv[:1] == ["--check"]:
        import monailabel
        import monailabel.app  # noqa: F401 - the FastAPI app start_server serves
        from monailabel.utils.others.class_utils import get_class_of_subclass_from_file

        if get_class_of_subclass_from_file("main", str(APP_DIR / "main.py"), "MONAILabelApp") is None:
            print(f"{APP_DIR / 'main.py'}: no MONAILabelApp subclass", file=sys.stderr)
            return 1
        print(f"monailabel {monailabel.__version__}: the server and the salt_seg app import")
        return 0
    from monailabel.main import Main

    args = list(argv)
    if args[:1] == ["start_server"]:
        args = args[1:]
    if "--app" not in args and "-a" not in args:
        args = ["--app", str(APP_DIR), *args]
    sys.argv = ["monailabel", "start_server", *args]
    Main().run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
