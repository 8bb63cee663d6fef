"""The front ends' overlays: a colour per text query, every query's mask on a frame above a legend, and the video
they go into with the input's sound (`OverlayVideoWriter`).
"""
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
from PIL import Image

from datasets.pictures import blend_mask
from datasets.video_files import Mp4Writer
from video_inference.audio import AudioTrack

OVERLAY_COLOURS = [(255, 64, 64), (64, 160, 255), (64, 220, 96), (255, 200, 0), (200, 64, 255), (0, 220, 220)]


def draw_overlays(image: Image.Image, masks: Sequence[np.ndarray], captions: Sequence[str],
                  colours: Sequence) -> np.ndarray:
    """The frame with every mask blended in its colour and outlined, above a legend: one line per mask, a swatch
    of its colour and its caption (cut with '...' to the frame's width). Returns `[H0 + legend, W0, 3]` uint8, the
    legend's height even, so that an even frame stays even."""
    rgb = np.array(image.convert('RGB'))
    for mask, colour in zip(masks, colours):
        blend_mask(rgb, mask, colour)
    width = rgb.shape[1]
    scale = max(0.4, width / 900)
    thickness = max(1, round(scale * 1.5))
    text_height = cv2.getTextSize('Ag', cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][1]
    line_height = text_height * 2
    legend_height = line_height * len(captions) + line_height // 2
    legend = np.full((legend_height + legend_height % 2, width, 3), 24, dtype=np.uint8)
    for i, (caption, colour) in enumerate(zip(captions, colours)):
        baseline = line_height * (i + 1)
        cv2.rectangle(legend, (5, baseline - text_height), (5 + text_height, baseline), colour, thickness=-1)
        text_left = 10 + text_height
        text = caption
        for length in range(len(caption) - 1, -1, -1):  # cut the caption to the frame's width
            if cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] <= width - text_left - 5:
                break
            text = caption[:length].rstrip() + '...'
        cv2.putText(legend, text, (text_left, baseline), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness,
                    cv2.LINE_AA)
    return np.concatenate([rgb, legend])


class OverlayVideoWriter:
    """An overlay video (mp4) with the input's sound: opened at its first frame, whose size it takes, with the
    audio's stream; `close` writes the sound of the time range (unless `with_audio` is false: a run cut short) and
    closes the file. `container_options`: Mp4Writer's (a fragmented mp4 for a live source)."""

    def __init__(self, path, frame_rate: float, audio: Optional[AudioTrack] = None,
                 container_options: Optional[dict] = None):
        self.path, self.frame_rate, self.audio = Path(path), frame_rate, audio
        self.container_options = container_options
        self.writer: Optional[Mp4Writer] = None

    def write(self, frame: np.ndarray):
        """frame [H, W, 3] uint8."""
        if self.writer is None:
            self.writer = Mp4Writer(self.path, self.frame_rate, frame.shape[:2],
                                    container_options=self.container_options)
            if self.audio is not None:
                self.audio.add_stream(self.writer.container)
        self.writer.write(frame)

    def close(self, with_audio: bool = True):
        """Closes the file (once; later calls do nothing)."""
        writer, self.writer = self.writer, None
        if writer is None:
            return
        try:
            if with_audio and self.audio is not None:
                self.audio.write(writer.container, writer.path)
        finally:
            writer.close()
