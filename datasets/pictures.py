"""A mask drawn on its frame: the evaluation pictures of the datasets, and the overlays of the front ends; and the
one way a PNG is written (`save_png`).
"""
import cv2
import numpy as np
from PIL import Image

from utils import replacing, writing

OVERLAY_ALPHA = 0.5


def save_png(path, image: Image.Image, what: str):
    """`image` as the PNG `path`, whole or not at all (`utils.replacing`: a full disk, Ctrl-C or a kill leaves no
    half-written file); a WriteError names `path` as the `what` when it cannot be written."""
    with writing(path, what), replacing(path) as temporary:
        image.save(temporary, format='png')


def blend_mask(rgb: np.ndarray, mask: np.ndarray, colour):
    """Blend `mask` ([H, W], 0/1 or bool) into `rgb` ([H, W, 3] uint8, changed in place) in `colour`, and outline it."""
    on = mask.astype(bool)
    rgb[on] = (rgb[on] * (1 - OVERLAY_ALPHA) + np.array(colour) * OVERLAY_ALPHA).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(rgb, contours, -1, colour, thickness=max(1, rgb.shape[0] // 240))


def draw_overlay(image: Image.Image, mask: np.ndarray, caption: str, colour) -> np.ndarray:
    """The frame with the mask blended in `colour`, its outline, and the caption on a dark band at the top."""
    rgb = np.array(image.convert('RGB'))
    blend_mask(rgb, mask, colour)
    scale = max(0.35, rgb.shape[0] / 720)
    thickness = max(1, round(scale * 1.5))
    lines, line = [], ''
    for word in caption.split():  # wrap the caption to the frame's width
        candidate = f'{line} {word}'.strip()
        if line and cv2.getTextSize(candidate, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] > rgb.shape[1] - 10:
            lines.append(line)
            candidate = word
        line = candidate
    lines.append(line)
    line_height = cv2.getTextSize('Ag', cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][1] * 2
    band = rgb[:line_height * len(lines) + line_height // 3]
    band[:] = (band * 0.4).astype(np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(rgb, text, (5, line_height * (i + 1) - line_height // 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), thickness, cv2.LINE_AA)
    return rgb
