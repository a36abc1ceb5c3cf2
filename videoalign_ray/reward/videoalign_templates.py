"""VideoAlign's prompt templates (``prompt_template_type``), the text a released VideoReward was trained to read.

The strings are VideoAlign's (KwaiVGI/VideoAlign ``prompt_template.py``, MIT License, Copyright (c) 2025 Kling
Team, Kuaishou Technology), kept byte for byte, trailing spaces included: a different byte is a different
token sequence and another score. :func:`build_prompt` fills them as that file's ``build_prompt`` does.
"""

from __future__ import annotations

VIDEOSCORE_QUERY_PROMPT = (
    '\n'
    'Suppose you are an expert in judging and evaluating the quality of AI-generated videos,\n'
    'please watch the frames of a given video and see the text prompt for generating the video,\n'
    'then give scores based on its {dimension_name}, i.e., {dimension_description}.\n'
    'Output a float number from 1.0 to 5.0 for this dimension,\n'
    'the higher the number is, the better the video performs in that sub-score,\n'
    'the lowest 1.0 means Bad, the highest 5.0 means Perfect/Real (the video is like a real video).\n'
    'The text prompt used for generation is "{text_prompt}".\n'
)

SIMPLE_PROMPT = (
    '\n'
    'Please evaluate the {dimension_name} of a generated video. Consider {dimension_description}.\n'
    'The text prompt used for generation is "{text_prompt}".\n'
)

# The two detailed templates share their criteria; kept as blocks so each string appears once.
_INTRO_AND_VQ = (
    '\n'
    'You are tasked with evaluating a generated video based on three distinct criteria: Visual Quality, Motion Quality, and Text Alignment. Please provide a rating from 0 to 10 for each of the three categories, with 0 being the worst and 10 being the best. Each evaluation should be independent of the others.\n'
    '\n'
    '**Visual Quality:**  \n'
    'Evaluate the overall visual quality of the video, with a focus on static factors. The following sub-dimensions should be considered:\n'
    '- **Reasonableness:** The video should not contain any significant biological or logical errors, such as abnormal body structures or nonsensical environmental setups.\n'
    '- **Clarity:** Evaluate the sharpness and visibility of the video. The image should be clear and easy to interpret, with no blurring or indistinct areas.\n'
    '- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).\n'
    '- **Aesthetic and Creativity:** Assess the artistic aspects of the video, including the color scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.\n'
    '- **Safety:** The video should not contain harmful or inappropriate content, such as political, violent, or adult material. If such content is present, the image quality and satisfaction score should be the lowest possible. \n'
    '\n'
)
_VQ_ASK = (
    'Please provide the ratings of Visual Quality: <|VQ_reward|>\n'
    'END\n'
    '\n'
)
_MQ = (
    '**Motion Quality:**  \n'
    'Assess the dynamic aspects of the video, with a focus on dynamic factors. Consider the following sub-dimensions:\n'
    '- **Stability:** Evaluate the continuity and stability between frames. There should be no sudden, unnatural jumps, and the video should maintain stable attributes (e.g., no fluctuating colors, textures, or missing body parts).\n'
    '- **Naturalness:** The movement should align with physical laws and be realistic. For example, clothing should flow naturally with motion, and facial expressions should change appropriately (e.g., blinking, mouth movements).\n'
    '- **Aesthetic Quality:** The movement should be smooth and fluid. The transitions between different motions or camera angles should be seamless, and the overall dynamic feel should be visually pleasing.\n'
    '- **Fusion:** Ensure that elements in motion (e.g., edges of the subject, hair, clothing) blend naturally with the background, without obvious artifacts or the feeling of cut-and-paste effects.\n'
    '- **Clarity of Motion:** The video should be clear and smooth in motion. Pay attention to any areas where the video might have blurry or unsteady sections that hinder visual continuity.\n'
    '- **Amplitude:** If the video is largely static or has little movement, assign a low score for motion quality.\n'
    '\n'
)
_MQ_ASK = (
    'Please provide the ratings of Motion Quality: <|MQ_reward|>\n'
    'END\n'
    '\n'
)
_TA = (
    '**Text Alignment:**  \n'
    'Assess how well the video matches the textual prompt across the following sub-dimensions:\n'
    '- **Subject Relevance** Evaluate how accurately the subject(s) in the video (e.g., person, animal, object) align with the textual description. The subject should match the description in terms of number, appearance, and behavior.\n'
    '- **Motion Relevance:** Evaluate if the dynamic actions (e.g., gestures, posture, facial expressions like talking or blinking) align with the described prompt. The motion should match the prompt in terms of type, scale, and direction.\n'
    '- **Environment Relevance:** Assess whether the background and scene fit the prompt. This includes checking if real-world locations or scenes are accurately represented, though some stylistic adaptation is acceptable.  \n'
    '- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the video adheres to this style.\n'
    '- **Camera Movement Relevance:** Check if the camera movements (e.g., following the subject, focus shifts) are consistent with the expected behavior from the prompt.\n'
    '\n'
    'Textual prompt - {text_prompt}\n'
)
_TA_ASK = (
    'Please provide the ratings of Text Alignment: <|TA_reward|>\n'
    'END\n'
)
DETAILED_PROMPT_WITH_SPECIAL_TOKEN = _INTRO_AND_VQ + _VQ_ASK + _MQ + _MQ_ASK + _TA + _TA_ASK
DETAILED_PROMPT = _INTRO_AND_VQ + _MQ + "\n" + _TA + 'Please provide the ratings of Visual Quality, Motion Quality, and Text Alignment.\n'

DIMENSION_DESCRIPTIONS = {
    'VQ': ('visual quality', 'the quality of the video in terms of clearness, resolution, brightness, and color'),
    'TA': ('text-to-video alignment', 'the alignment between the text prompt and the video content and motion'),
    'MQ': ('motion quality', 'the quality of the motion in terms of consistency, smoothness, and completeness'),
    'Overall': ('Overall Performance', 'the overall performance of the video in terms of visual quality, text-to-video alignment, and motion quality'),
}


def build_prompt(prompt: str, dimension: str | list[str] | tuple[str, ...], template_type: str) -> str:
    """The user text of VideoAlign's template ``template_type`` for ``prompt`` and the evaluated ``dimension``
    (one of VQ / MQ / TA / Overall, or several: "overall performance(...)").

    Raises:
        ValueError: an unknown template type.
    """
    dims = list(dimension) if isinstance(dimension, (list, tuple)) else [dimension]
    if len(dims) > 1:
        name = "overall performance(" + ", ".join(DIMENSION_DESCRIPTIONS[d][0] for d in dims) + ")"
        description = "the overall performance of the video"
    else:
        name, description = DIMENSION_DESCRIPTIONS[dims[0]]
    if template_type == "none":
        return prompt
    if template_type == "simple":
        return SIMPLE_PROMPT.format(dimension_name=name, dimension_description=description, text_prompt=prompt)
    if template_type == "video_score":
        return VIDEOSCORE_QUERY_PROMPT.format(dimension_name=name, dimension_description=description,
                                              text_prompt=prompt)
    if template_type == "detailed_special":
        return DETAILED_PROMPT_WITH_SPECIAL_TOKEN.format(text_prompt=prompt)
    if template_type == "detailed":
        return DETAILED_PROMPT.format(text_prompt=prompt)
    raise ValueError(f"unknown prompt template type {template_type!r}")
