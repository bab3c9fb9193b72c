"""Fine-tune a pretrained ViT on a TensorFlow Datasets dataset with the paper's recipe.

    python examples/finetune_tfds.py --dataset cifar10 --model ViTB16 --weights imagenet21k \
        --image-size 384 --steps 10000 --batch-size 512

The recipe is the ViT paper's fine-tuning: SGD with momentum 0.9, linear warmup then cosine decay,
gradient clipping at global norm 1, no weight decay, a zero-initialised head. The run directory
gets model.keras, best.keras, history.csv, curves.png, metrics.json and TensorBoard logs; run the
same command again with --resume after an interruption.
"""

import argparse
import math


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="cifar10", help="TFDS name (default cifar10)")
    parser.add_argument("--model", default="ViTB16", help="variant, e.g. ViTS16, ViTB16, ViTL16")
    parser.add_argument("--weights", default="imagenet21k", help="pretrained weights name or path")
    parser.add_argument("--image-size", type=int, default=384, help="fine-tuning resolution")
    parser.add_argument("--batch-size", type=int, default=512, help="global batch size")
    parser.add_argument("--steps", type=int, default=10_000, help="optimizer steps")
    parser.add_argument("--lr", type=float, default=0.03, help="peak learning rate")
    parser.add_argument("--gradient-accumulation", type=int, default=None,
                        help="accumulate K batches per update when the batch does not fit")
    parser.add_argument("--mixed-precision", choices=["float16", "bfloat16"])
    parser.add_argument("--data-dir", help="TFDS data directory")
    parser.add_argument("--run-dir", default="runs/finetune")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    import keras_vit
    from keras_vit import data, training

    training.set_mixed_precision(args.mixed_precision)
    strategy = training.get_strategy("auto")
    train = data.from_tfds(args.dataset, "train", args.image_size, args.batch_size, training=True,
                           data_dir=args.data_dir)
    test = data.from_tfds(args.dataset, data.EVAL_SPLITS.get(args.dataset, "test"),
                          args.image_size, args.batch_size, data_dir=args.data_dir)
    steps_per_epoch = max(1, int(train.cardinality()))
    epochs = math.ceil(args.steps / steps_per_epoch)
    with strategy.scope():
        model = keras_vit.models.VARIANT_BUILDERS[args.model](
            image_size=args.image_size, num_classes=train.num_classes, weights=args.weights,
            class_names=train.class_names)
        model.compile(**training.finetune_recipe(
            epochs * steps_per_epoch, base_lr=args.lr, num_classes=train.num_classes,
            gradient_accumulation_steps=args.gradient_accumulation))
    callbacks = training.callbacks(args.run_dir, settings=vars(args))
    if not args.resume and training.read_backup(f"{args.run_dir}/backup"):
        raise SystemExit(f"{args.run_dir} holds an unfinished run: pass --resume or another --run-dir")
    training.fit(model, train, epochs, callbacks, steps_per_epoch=steps_per_epoch,
                 validation_data=test)
    print(model.evaluate(test, return_dict=True, verbose=0))


if __name__ == "__main__":
    main()
