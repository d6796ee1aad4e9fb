"""A writer run used by test_resume: writes N deterministic rows, reporting each commit."""

import sys
import time

from linkedout.storage import FeatureStore, FeatureWriter
from linkedout.testing.factories import make_manifest, make_row

uri, n, batch, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
store = FeatureStore.open_or_create(uri, make_manifest())
with FeatureWriter(store, commit_every=batch) as writer:
    for i in range(n):
        before = writer.stats.commits
        writer.add(make_row(f"item{i:05d}", store.manifest))
        if writer.stats.commits != before:
            print(f"committed {writer.stats.commits}", flush=True)
            time.sleep(pause)
s = writer.stats
print(f"done written={s.written} skipped={s.skipped}", flush=True)
