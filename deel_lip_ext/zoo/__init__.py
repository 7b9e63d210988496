"""Reference architectures from the papers, built from deel-lip-ext layers."""

from deel_lip_ext.zoo.linf import hybrid_head, hybrid_training_model, linf_dist_net, linf_dist_net_mlp
from deel_lip_ext.zoo.bcop import NearestUpSampling2D, dcgan_critic, fc3, kw_large, kw_small
from deel_lip_ext.zoo.liresnet import liresnet
from deel_lip_ext.zoo.modern import aol_net, sll_net
