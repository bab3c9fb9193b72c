"""Quiet start-up for the `keras-vit` command: TensorFlow's import-time log lines are dropped.

TensorFlow 2.21 writes them (oneDNN, CUDA stubs, CPU feature guard) to the stderr file descriptor
before absl logging is initialised, ignoring TF_CPP_MIN_LOG_LEVEL, and twice (two shared
libraries). So the import runs with fd 2 captured, and every line that is not one of these
known notices is written back: real import errors and warnings still show.
"""

import contextlib
import os
import re
import sys
import tempfile

TENSORFLOW_NOTICES = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|"
    r"cudart_stub\.cc|cuda_(dnn|fft|blas)\.cc|Unable to register cu(DNN|FFT|BLAS) factory|"
    r"cpu_feature_guard\.cc|To enable the following instructions|rebuild TensorFlow with|"
    r"computation_placer\.cc|TF-TRT Warning|Could not find cuda drivers")


def wanted(environ=os.environ, argv=sys.argv):
    """True in the `keras-vit` command (or `python -m keras_vit.cli`, whose argv[0] is "-m" while
    packages import) when the user has not set TF_CPP_MIN_LOG_LEVEL."""
    command = os.path.basename(argv[0]) if argv else ""
    return command in ("keras-vit", "-m") and "TF_CPP_MIN_LOG_LEVEL" not in environ


@contextlib.contextmanager
def tensorflow_notices_dropped():
    """Runs the block with fd 2 captured; writes back the lines that are not TF notices."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # also the CPU-only "failed call to cuInit" error
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines(keepends=True):
                if not TENSORFLOW_NOTICES.search(line):
                    sys.stderr.write(line)
