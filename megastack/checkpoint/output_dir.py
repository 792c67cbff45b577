"""Output directories written whole or not at all: a private temporary directory beside the
destination, renamed onto it once everything is written (the offline tools' --save/--output)."""

import logging
import os
import shutil
import tempfile

logger = logging.getLogger(__name__)


def new_temp_root(dst: str) -> str:
    """A directory that did not exist before, beside DST (so the final rename stays on one file
    system). A fixed name like DST.tmp could be the user's data, or the source itself."""
    dst_abs = os.path.normpath(os.path.abspath(dst))
    parent, name = os.path.split(dst_abs)
    os.makedirs(parent, exist_ok=True)
    debris = [e for e in os.listdir(parent) if e.startswith(f"{name}.tmp-")]
    if debris:
        logger.warning("%s: %s look like output of an interrupted write into %s; remove them "
                       "if nothing else is writing there", parent, ", ".join(sorted(debris)), dst)
    tmp = tempfile.mkdtemp(prefix=f"{name}.tmp-", dir=parent)
    # mkdtemp makes it private (0700); the published checkpoint gets the mode mkdir would give.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def publish(tmp_root: str, dst: str) -> None:
    """Rename the finished `tmp_root` onto `dst` (empty or missing, or an earlier output that
    the caller allowed to replace)."""
    if os.path.isdir(dst) and os.listdir(dst):  # --force over an earlier output of the tool
        # Moved aside under a name no one else holds (renaming onto the new empty directory),
        # so a crash between the renames leaves both trees on disk.
        dst_abs = os.path.normpath(os.path.abspath(dst))
        old = tempfile.mkdtemp(prefix=f"{os.path.basename(dst_abs)}.replaced-",
                               dir=os.path.dirname(dst_abs))
        os.rename(dst, old)
        os.rename(tmp_root, dst)
        shutil.rmtree(old)
    else:
        if os.path.isdir(dst):
            os.rmdir(dst)  # empty: replaced by the finished tree
        os.rename(tmp_root, dst)
