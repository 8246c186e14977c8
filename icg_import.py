"""Install model files you downloaded by hand into the WebUI's models folder. From the WebUI's folder:

    venv/bin/python extensions/<this extension>/icg_import.py FILE_OR_FOLDER --as MODEL_ID

(``venv\\Scripts\\python`` on Windows.) It runs ``icg import`` (``--help`` lists its options) with this
folder on the path and ``--models-dir`` defaulting to the WebUI's ``models/icg``.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

if __name__ == "__main__":
    from icg.webui.launcher import import_main

    sys.exit(import_main(sys.argv[1:], HERE))
