"""Reference architectures from the papers, built from deel-lip-ext layers."""

from deel_lip_ext.zoo.bcop import NearestUpSampling2D, dcgan_critic, fc3, kw_large, kw_small
