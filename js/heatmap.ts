// Placeholder entry so the build has a target; replaced by the heatmap widget.
export default { render() {} };
