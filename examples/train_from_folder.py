"""Train a ViT from scratch on a folder of images (one sub-folder per class).

    python examples/train_from_folder.py ~/photos/train --val-dir ~/photos/val --model ViTS16 \
        --image-size 224 --epochs 100 --mixed-precision bfloat16

Pre-training style recipe: AdamW (weight decay on kernels only), linear warmup then cosine decay,
gradient clipping at global norm 1, Inception crops and flips, optional RandAugment and MixUp.
ViTs trained from scratch need a lot of data or strong augmentation; on a few thousand images,
fine-tuning a pretrained model (examples/finetune_tfds.py, `--weights`) is far better.
"""

import argparse


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("train_dir", help="training images, one sub-folder per class")
    parser.add_argument("--val-dir", help="validation images with the same class sub-folders")
    parser.add_argument("--model", default="ViTS16", help="variant (default ViTS16)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1,
                        help="AdamW weight decay, multiplied by the learning rate (Keras convention)")
    parser.add_argument("--randaugment", action="store_true")
    parser.add_argument("--mixup", type=float, default=0.0, help="MixUp alpha (0 = off)")
    parser.add_argument("--mixed-precision", choices=["float16", "bfloat16"])
    parser.add_argument("--run-dir", default="runs/from_folder")
    args = parser.parse_args()

    import keras

    import keras_vit
    from keras_vit import data, training

    training.set_mixed_precision(args.mixed_precision)
    augment = keras.layers.RandAugment(value_range=(0, 255)) if args.randaugment else None
    train = data.from_directory(args.train_dir, args.image_size, args.batch_size, training=True,
                                augment=augment, mixup_alpha=args.mixup)
    # Validation classes are matched to the training classes by name, not by position.
    val = (data.from_directory(args.val_dir, args.image_size, args.batch_size,
                               class_names=train.class_names) if args.val_dir else None)
    steps_per_epoch = int(train.cardinality())
    steps = args.epochs * steps_per_epoch
    strategy = training.get_strategy("auto")
    with strategy.scope():
        model = keras_vit.models.VARIANT_BUILDERS[args.model](
            image_size=args.image_size, num_classes=train.num_classes,
            class_names=train.class_names, dropout_rate=0.1, drop_path_rate=0.1)
        model.compile(**training.scratch_recipe(steps, base_lr=args.lr,
                                                weight_decay=args.weight_decay,
                                                warmup_steps=steps // 20,
                                                num_classes=train.num_classes))
    callbacks = training.callbacks(args.run_dir, monitor="val_accuracy" if val else "accuracy",
                                   settings=vars(args))
    training.fit(model, train, args.epochs, callbacks, validation_data=val)


if __name__ == "__main__":
    main()
