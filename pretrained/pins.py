"""sha256 of the shipped weight files, pinned in the code: a weights file edited together with its manifest fails.

Retraining with a recipe writes a new file; ship it by updating its pin here in the same commit.
"""
PINNED_SHA256 = {
    "digits": "2932806b91a09fb5ca1ef112797d693433f6c7721fac1e2d31a20808599b7efb",
    "digits_features": "39d97c8bd192e7b0ed5d29eb695313d02b0de03dbf9dfa3d9aa7783fd46d4f7f",
    "digits-lw": "1b69152c36a4914b0189d2bb9870a311c3e5e7706a3b43120dc75a2b48543667",
    "digits-vdm": "dc11ee47095aeae00bb4cf6795674053600b7fb854b44f940996b73fa76e71b5",
    "digits-cond": "65e49c396b7e84a4021800d9b8ea53d8e39a8fcc7c7f763d36ab1292d3e1ce9d",
    "digits-v": "5a46f640627c5d23ba03e36ff5c78926632b5590e8cc04dab62487cfb804bc31",
    "digits-kd": "54ac741387bc92a03a4c3785cb0a2e36c5afa4e5769942cce1f787875f3620c2",
    "digits-pd": "704ad4f34adda901d3263e68f86db5a1029c05cf1b2ae43557fe3c63c82544f8",
    "digits-cd": "6e5d7017760fd3c54cc7a40994682d071073a45d318d4c9a48316f7f826b23ba",
    "digits-genie": "02dba697f76d60998ccabba0066a42e69bdff939082006ca88f5971f3fd421b1",
    "digits-edm": "a9c615f8cdf347efd860fdbcf04bdce202de0a65770fbf7edc6240e18b12dec5",
    "digits-flow": "bc843a919cf8efd24066417826b1de8a008d5f80aa605c2d3a21a019d9b9f16a",
}
