// The step parameters as immediate data (push constants), set per dispatch in the command stream: any
// number of steps can be recorded before one submit, each with its own values.
var<immediate> p: Params;
