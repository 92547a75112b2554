"""Facts that several stages use, each stated once here.

Stage-specific defaults live on the stage's config dataclass; what is here is shared by
more than one stage (or by a stage and the analysis that models it).
"""

# The paper's MAE mask ratio (He et al. 2022's default is 0.75): pretraining's default, the mask
# assumed for files that do not record theirs, and the compute model of the scaling analysis.
MASK_RATIO = 0.8

# How images are resampled to the model's size: the paper's pretraining crops and evaluation
# resizes are bicubic (torchvision's interpolation=3); bilinear is the other choice offered.
INTERPOLATIONS = ("bicubic", "bilinear")
INTERPOLATION = "bicubic"

# Dense bf16 peak TFLOP/s by device name (vendor datasheets; SXM parts), the denominator of MFU.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A6000": 155.0, "V100": 125.0}

# What a sweep's --dry-run assumes when its grid's `compute:` section says nothing: an H100-class
# GPU at 40 % model-FLOP utilisation.
ASSUMED_GPU_TFLOPS = PEAK_BF16_TFLOPS["H100"]
ASSUMED_MFU = 0.4

# The ImageNet channel statistics every input is normalised with (pretraining, evaluation, and
# the models written for other libraries).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
