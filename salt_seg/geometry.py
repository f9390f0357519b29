"""World-coordinate conventions shared by every layer (a base module: numpy only).

salt_seg's world is RAS+ millimetres (nibabel's convention); DICOM and ITK use LPS. :data:`LPS_TO_RAS` converts
between them, as a 4x4 acting on affines or homogeneous points; it is its own inverse.
"""

from __future__ import annotations

import numpy as np

#: world LPS mm (DICOM, ITK) -> world RAS mm, as a 4x4 acting on affines; its own inverse. Read-only.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
LPS_TO_RAS.flags.writeable = False
