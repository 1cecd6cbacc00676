module hybridway.invalid/cni-driver

go 1.23

require github.com/containernetworking/cni v1.3.0
