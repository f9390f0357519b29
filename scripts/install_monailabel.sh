#!/usr/bin/env bash
# Install the MONAI Label app's packages (apps/monailabel/) into the project's virtual environment (.venv, or
# $SALT_SEG_VENV), next to salt_seg: `bash scripts/install_monailabel.sh`. Idempotent; .ci/run calls it.
#
# Two steps, because `pip install monailabel` cannot share an environment with salt_seg's numpy 2 and pydicom 3:
#  1. the extra salt-seg[monailabel]: the packages monailabel 0.8.5's server imports (its own requirement list
#     minus the two below and the sample apps' extras), resolved normally by pip;
#  2. monailabel 0.8.5 and pydicom-seg 0.4.1 with --no-deps: pydicom-seg (monailabel's DICOMweb SEG converter)
#     declares numpy<2 and jsonschema<4, so pip's resolver would take numpy 2.x back to 1.26, and it imports
#     pydicom._storage_sopclass_uids, which pydicom 3.0 removed (apps/monailabel/saltseg_tasks.py maps that name
#     onto pydicom.uid when the app starts). `pip check` reports what step 2 leaves unmet; the README lists it.
source "$(dirname "$0")/_env.sh"
MONAILABEL_VERSION="0.8.5"
STAMP="$VENV/.salt_seg_monailabel"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/install_monailabel.sh" | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
echo "[setup] installing the MONAI Label app's packages (salt-seg[monailabel], monailabel $MONAILABEL_VERSION)"
python -m pip install --quiet -e "$ROOT[monailabel]"
python -m pip install --quiet --no-deps "monailabel==$MONAILABEL_VERSION" "pydicom-seg==0.4.1"
# the server must import here (with the app's pydicom 3 mapping), or the install is not done
python "$ROOT/apps/monailabel/serve.py" --check
echo "$WANT" > "$STAMP"
