// A module resolve hook for Node (module.register, Node >= 18.19): the ES
// modules that @ldclabs/cose-ts 1.5.0 publishes import each other without a
// file extension (`from './header'`), which bundlers accept and Node's ES
// module loader does not (ERR_MODULE_NOT_FOUND). For relative imports from
// inside that package only, a specifier Node cannot find is tried again
// with `.js`; nothing else is touched.

export async function resolve(specifier, context, nextResolve) {
  try {
    return await nextResolve(specifier, context)
  } catch (e) {
    const fromCoseTs = (context.parentURL ?? '').includes('/node_modules/@ldclabs/cose-ts/')
    if (
      e?.code === 'ERR_MODULE_NOT_FOUND' &&
      fromCoseTs &&
      /^\.\.?\//.test(specifier) &&
      !specifier.endsWith('.js')
    ) {
      return nextResolve(`${specifier}.js`, context)
    }
    throw e
  }
}
