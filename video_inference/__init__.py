"""Segmenting users' videos, shared by the front ends (inference.py, demo.py, hubconf.py): it sits above the library
(models/, datasets/) and below the scripts, one concern a module:

- `sources`: a video's frames, read one at a time (a file, a frames folder, a live stream);
- `segmenter`: MTTR on a whole video of any length, window by window (a generator of each window's results);
- `choice`: which object query answers a text query from window to window (`--rule`);
- `results`: a text query's results folder, written window by window;
- `one_video`: one video into a results folder, with its summary;
- `collection`: a list of videos spread over the processes of a run;
- `overlays`, `audio`: the coloured overlays and the input's sound in them.
"""
