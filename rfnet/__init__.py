"""RFNet, the multimodal usability judge (issue 5). May import rf1m."""
