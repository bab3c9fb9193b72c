from setuptools import find_packages, setup

setup(
    name="keras-vision-transformer",  # the PyPI name `keras-vit` belongs to an unrelated project
    version="0.1.0",
    description="The Vision Transformer (ViT) for Keras 3 and TensorFlow: published checkpoints, "
    "training, SavedModel/TFLite/ONNX export and explainability.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["keras_vit", "keras_vit.*"]),
    package_data={"keras_vit": ["*.txt"]},
    python_requires=">=3.10",
    install_requires=[
        "keras>=3.10",
        "tensorflow>=2.18",
        "tensorflow-datasets>=4.9",
        "numpy",
        "pillow",
        "matplotlib",
        "safetensors",
        "scikit-learn",  # ships the real 8x8 digits dataset of `keras-vit train`'s default run
        "ai-edge-litert",  # runs exported .tflite files (tf.lite.Interpreter is deprecated)
        "tensorboard",  # the TensorBoard logs of every training run
    ],
    extras_require={
        # Test-only references. torch is pinned to the CPU build these machines provide: an
        # unpinned torch pulls gigabytes of CUDA packages.
        "test": ["pytest", "torch==2.13.0", "transformers", "jax[cpu]", "tensorflow-serving-api", "scipy",
                 "huggingface_hub", "onnx", "onnxruntime", "tf2onnx", "ai-edge-quantizer"],
        # keras_vit.export.onnx and `keras-vit export --format onnx` (tested on onnx 1.23,
        # onnxruntime 1.32, tf2onnx 1.17).
        "onnx": ["onnx>=1.16", "onnxruntime>=1.17", "tf2onnx>=1.17"],
        # quantization="int8" / `--quantize int8` TFLite files (tested on ai-edge-quantizer 0.10).
        "quantize": ["ai-edge-quantizer>=0.10"],
        # hf://ORG/NAME[@REVISION] weights (keras_vit.weights.hub); tested on huggingface_hub 0.23 and 2.4.
        "hub": ["huggingface_hub>=0.23"],
        "benchmark": ["keras-hub", "torch==2.13.0", "transformers"],  # timm (GPU runs) needs torchvision: install it by hand there
        # The gRPC client of examples/serving_client.py.
        "serving": ["tensorflow-serving-api"],
    },
    entry_points={"console_scripts": ["keras-vit=keras_vit.cli:main"]},
    license="Apache-2.0",
    classifiers=["Programming Language :: Python :: 3", "Framework :: Keras"],
)
