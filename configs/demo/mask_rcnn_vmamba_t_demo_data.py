# Mask R-CNN + FPN with VMamba-T as configs/mask_rcnn_vmamba_t_1x.py (COCO image sizes, 2 images per GPU; 3 classes),
# from scratch on the synthetic shapes of tools/make_demo_data.py (COCO layout): multi-GPU and multi-node
# checks without COCO (docs/training.md, "Multi-GPU and multi-node"). 2 epochs, a checkpoint after each, validation
# after the second. bash tools/dist_train.sh configs/demo/mask_rcnn_vmamba_t_demo_data.py 8
_base_ = ['../mask_rcnn_vmamba_t_1x.py']

data_root = 'data/demo/coco/'
classes = ('disc', 'square', 'triangle')
metainfo = dict(classes=classes)

model = dict(backbone=dict(init_cfg=None),
             roi_head=dict(bbox_head=dict(num_classes=len(classes)), mask_head=dict(num_classes=len(classes))))
train_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo))
val_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=2, val_interval=2)
